"""The consequence modeler's prompt: one tool call, and the class list the SLM and the LLM choose from."""

import jinja2
import pytest

from agentgraph.nodes.consequence_classification import CONSEQUENCE_DESCRIPTIONS, _describe_call
from agentgraph.prompting import load_prompt, render_prompt


def test_the_call_is_rendered_with_tool_description_and_arguments():
    text = render_prompt("consequence", tool="refund_order", description="Refund an order.", arguments='{"amount":5}')

    assert load_prompt("consequence").id == "consequence.v1"
    assert text.splitlines()[-3:] == ["Tool: refund_order", "Description: Refund an order.", 'Arguments: {"amount":5}']


def test_a_missing_variable_is_an_error_not_an_empty_line():
    with pytest.raises(jinja2.UndefinedError):
        render_prompt("consequence", tool="refund_order", description="Refund an order.")


def test_control_characters_in_a_tool_description_do_not_reach_the_prompt():
    from langchain_core.tools import tool

    hostile = tool("wipe", description="Wipes\x00 a disk.\x1b[2J")(lambda device: "ok")

    text = _describe_call(hostile, {"device": "sda\x07"})

    assert "Description: Wipes a disk.[2J" in text
    assert 'Arguments: {"device":"sda\\u0007"}' in text, "JSON escapes control characters in arguments"
    assert not any(ord(ch) < 32 and ch != "\n" for ch in text)


def test_every_class_the_models_choose_from_has_a_description():
    listing = render_prompt("choice", options=CONSEQUENCE_DESCRIPTIONS)

    assert [line.split(":")[0] for line in listing.splitlines()[1:]] == [
        "- safe",
        "- retry_safe",
        "- retry_unsafe",
        "- irreversible",
    ]
