"""The example's planner prompt: the message, the requests the router read, the capabilities, what is done."""

from agentgraph.graphs.customer_support.planning import CAPABILITIES
from agentgraph.nodes.loop import Observation
from agentgraph.prompting import load_prompt
from agentgraph.routing import RecognisedStep


def _render(**variables):
    step = RecognisedStep(
        text="cancel 48213", label="cancel_order", route="action", confidence=0.98, strategy="classifier"
    )
    state = {"steps": [step]}
    defaults = {
        "goal": "cancel 48213 and tell me when 10001 arrives",
        "observations": [],
        "reason": "start",
        "remaining": [],
    }
    return load_prompt("support_plan").render(capabilities=CAPABILITIES, state=state, **{**defaults, **variables})


def test_the_planner_sees_the_message_the_requests_read_in_it_and_every_capability_with_its_arguments():
    text = _render()

    assert "Customer's message: cancel 48213 and tell me when 10001 arrives" in text
    assert '- cancel_order: "cancel 48213"' in text
    assert "- cancel_order: order_id=<number>: cancel the order" in text
    assert "- check_refund_policy: explain our refund policy" in text
    assert "Plan the work that serves every request in the message" in text
    assert load_prompt("support_plan").id == "support_plan.v1"


def test_a_replan_shows_what_was_done_and_what_failed():
    done = [
        Observation(step="cancel_order order_id=48213", result="Order 48213 is cancelled."),
        Observation(step="delivery_period order_id=10001", result="there is no order 10001", error=True),
    ]
    text = _render(observations=done, reason="replan")

    assert "1. cancel_order order_id=48213 -> Order 48213 is cancelled." in text
    assert "2. delivery_period order_id=10001 -> FAILED: there is no order 10001" in text
    assert "Plan only the work still to do." in text
