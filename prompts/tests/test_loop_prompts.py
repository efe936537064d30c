"""The loop engine's prompts: the evaluator asks the question the plan's position allows; the planner says why it is called."""

from __future__ import annotations

from agentgraph.prompting import load_prompt, render_prompt


def test_evaluator_prompt_states_the_step_its_result_and_what_is_left():
    text = render_prompt(
        "loop_evaluate",
        goal="Add 1 to 3",
        number=2,
        total=3,
        step="add 2",
        error=False,
        observation="running total is 3",
        next_step="add 3",
    )
    assert "Step 2 of 3: add 2" in text
    assert "Result of step 2: running total is 3" in text
    assert "Steps left in the plan: 1. Next step: add 3" in text
    assert load_prompt("loop_evaluate").id == "loop_evaluate.v1"


def test_evaluator_prompt_asks_whether_the_goal_is_reached_once_the_plan_is_exhausted():
    done = render_prompt(
        "loop_evaluate",
        goal="Add 1 to 3",
        number=3,
        total=3,
        step="add 3",
        error=False,
        observation="running total is 6",
        next_step=None,
    )
    assert "all 3 steps of its plan without error" in done and done.endswith("Is the goal reached?")
    failed = render_prompt(
        "loop_evaluate",
        goal="Add 1 to 3",
        number=3,
        total=3,
        step="add 3",
        error=True,
        observation="overflow",
        next_step=None,
    )
    assert "but the last one FAILED" in failed


def test_planner_prompt_carries_the_results_and_the_reason():
    observations = [
        {"step": "add 1", "result": "1", "error": False},
        {"step": "add 2", "result": "boom", "error": True},
    ]
    text = render_prompt(
        "loop_plan", goal="Add 1 to 3", observations=observations, reason="escalation", remaining=["add 3"]
    )
    assert "1. add 1 -> 1" in text and "2. add 2 -> FAILED: boom" in text
    assert "could not judge" in text and "- add 3" in text
    start = render_prompt("loop_plan", goal="Add 1 to 3", observations=[], reason="start", remaining=[])
    assert "Plan the work that reaches the goal." in start and "DONE:" in start
