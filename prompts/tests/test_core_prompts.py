"""The templates the SLM interface itself renders: choice and structured."""

import json

import pytest
from pydantic import BaseModel

from agentgraph.prompting import available_prompts, load_prompt, render_prompt
from agentgraph.slm.base import choice_messages, json_schema_instruction


def test_template_versions_are_listed_and_the_newest_loads():
    versions = available_prompts()
    assert {"choice", "structured"} <= set(versions)
    for name, numbers in versions.items():
        assert numbers == sorted(set(numbers)), name
        assert load_prompt(name).version == numbers[-1]


def test_choice_lists_every_label_once_with_its_description():
    text = render_prompt("choice", options={"track_order": "where an order is", "cancel_order": None})
    assert text.splitlines() == [
        "Reply with exactly one of these labels and nothing else:",
        "- track_order: where an order is",
        "- cancel_order",
    ]


def test_choice_is_appended_to_the_last_user_message_only():
    messages = choice_messages(
        [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "last"},
        ],
        {"a": None, "b": None},
        system="sys",
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "first"
    assert messages[3]["content"].startswith("last\n\nReply with exactly one")


def test_structured_instruction_states_the_schema_first():
    class Order(BaseModel):
        order_id: str

    text = json_schema_instruction(Order)
    schema_line = next(line for line in text.splitlines() if line.startswith("{"))
    assert json.loads(schema_line) == Order.model_json_schema()


def test_missing_variables_and_unknown_versions_fail_loudly():
    with pytest.raises(Exception, match="options"):
        render_prompt("choice")
    with pytest.raises(KeyError, match="versions"):
        load_prompt("choice", 99)
    with pytest.raises(KeyError, match="no prompt template"):
        load_prompt("nonexistent")
