"""Real traffic: perturbations, the write-safety rule, clarifying questions, and the example router and graph on them.

The router and graph tests use the real parts: the example's trained
classifier and act detector, the embedded SmolLM2 for extraction, SQLite for
the store and the checkpoints. The frontier LLM is a scripted chat model that
records its calls, attached wherever a test claims it is not called.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from scripted_llm import answering_llm

from agentgraph.acts import ActVerdict
from agentgraph.clarification import Clarification, ClarificationPolicy, ClarifiedRequest, ReferencePattern
from agentgraph.perturb import (
    KEYBOARD_NEIGHBOURS,
    PERTURBATIONS,
    add_typos,
    id_only,
    keyboard_typo,
    realistic,
    truncate,
)
from agentgraph.write_safety import WritePolicy, judge_write

BENCHMARK_DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"

WRITES_AGAINST_THE_WORDS = [
    "Do NOT cancel order 48213",
    "I don't want to cancel order 48213 anymore, please keep it",
    "Can I cancel order 48213?",
    "how much is the cancellation fee for order 48213?",
    "please do not cancel order 48213",
    "don't cancel 48213!!",
    "my order 48213 got cancelled yesterday, thanks",
    "order 48213 was cancelled by mistake?",
    "is it possible to cancel order 48213 after it ships?",
    "never cancel order 48213",
    "do not change my order 48213",
    "dont change my order",
    "I don't want any change to order 48213",
    "no changes to order 48213 please",
    "got my refund for order 10001, thanks",
    "order 48213 cancel mat karo",
]
"""The adversarial run's phrasings that wrote against the customer's words (issue 19), and more of their kind."""


# Perturbations (no model).


def test_every_perturbation_is_reproducible_from_its_seed_and_keeps_the_identifiers():
    text = "Hello, I would like to cancel my order 48213 please, can you help me?"
    for name, perturb in PERTURBATIONS.items():
        assert perturb(text, random.Random(5)) == perturb(text, random.Random(5)), name
    variants = {realistic(text, random.Random(seed)) for seed in range(40)}
    assert len(variants) > 30 and text not in variants
    # Typos, abbreviations and code-mixing never touch digits; a fragment may leave the number out.
    assert all(re.findall(r"\d{3,}", variant) in ([], ["48213"]) for variant in variants)
    assert id_only(text, random.Random(0)) in {"48213", "order 48213", "order no 48213", "order id 48213", "#48213",
                                               "48213 ?", "my order 48213"}  # fmt: skip


def test_typos_hit_a_neighbouring_key_or_drop_double_or_swap_a_letter():
    for seed in range(200):
        typo = keyboard_typo("parcel", random.Random(seed))
        assert typo != "parcel" or "parcel".count(typo[0]) > 1
        if len(typo) == len("parcel") and sorted(typo) != sorted("parcel"):
            [(wrong, right)] = [(a, b) for a, b in zip(typo, "parcel", strict=True) if a != b]
            assert wrong in KEYBOARD_NEIGHBOURS[right]
    assert add_typos("a to 12345", random.Random(0), rate=1.0) == "a to 12345", "short words and digits stay"


def test_a_fragment_keeps_one_to_four_words_of_what_the_request_is_about():
    fragments = {
        truncate("Hi, could you please help me cancel my order 48213 today?", random.Random(s)) for s in range(30)
    }
    assert all(1 <= len(f.split()) <= 4 for f in fragments)
    assert {f.split()[0] for f in fragments} == {"cancel"}, "request filler (hi, could you please help me) goes first"


# The write-safety rule (no model).

POLICY = WritePolicy(labels={"cancel_order"})
REQUEST = ActVerdict(act="request", confidence=0.97)


@pytest.mark.parametrize(
    ("text", "act", "confidence", "references", "judgement"),
    [
        ("I want to cancel order 48213", REQUEST, 0.99, ["48213"], "write"),
        ("my order 48213 got cancelled", ActVerdict(act="statement", confidence=0.9), 0.99, ["48213"], "acknowledge"),
        ("do not cancel 48213", ActVerdict(act="negation", confidence=0.9), 0.99, ["48213"], "acknowledge"),
        ("thanks", ActVerdict(act="social", confidence=0.99), 0.99, [], "acknowledge"),
        ("can I cancel order 48213?", ActVerdict(act="question", confidence=0.9), 0.99, ["48213"], "confirm"),
        ("I don't want this, cancel order 48213",
         ActVerdict(act="request", confidence=0.97, negation_cue="don't want this"), 0.99, ["48213"], "confirm"),
        ("I want to cancel order 48213", ActVerdict(act="request", confidence=0.5), 0.99, ["48213"], "confirm"),
        ("I want to cancel order 48213", REQUEST, 0.8, ["48213"], "confirm"),
        ("I want to cancel order 48213", None, 0.99, ["48213"], "confirm"),
        ("please cancel order 53090, my number is 48213", REQUEST, 0.99, ["53090", "48213"], "which"),
        ("cancel 48213", REQUEST, 0.99, ["48213"], "fragment"),
    ],
)  # fmt: skip
def test_a_write_runs_unasked_only_on_an_explicit_request(text, act, confidence, references, judgement):
    assert judge_write(POLICY, text, confidence=confidence, act=act, references=references).judgement == judgement


CLARIFY = ClarificationPolicy(
    actions={"track_order": "track {it}", "change_order": "change {it}", "cancel_order": "cancel {it}"},
    reference=ReferencePattern(pattern=r"(?<![\w#])\d{4,20}(?!\w)", name="order {}", default="your order"),
    reference_candidates=["track_order", "change_order", "cancel_order"],
)


@pytest.mark.parametrize("answer", ["yes", "Yes please", "ok do it", "haan kar do", "sure, go ahead!", "yes cancel it"])
def test_a_yes_to_a_confirmation_agrees_to_the_write(answer):
    resolved = CLARIFY.resolve(CLARIFY.confirm("cancel_order", request="cancel 48213"), answer)
    assert resolved == ClarifiedRequest(label="cancel_order", text="cancel 48213", consent="confirmed")


@pytest.mark.parametrize("answer", ["no", "no thanks", "nahi", "wait"])
def test_a_no_to_a_confirmation_does_nothing_and_says_so(answer):
    resolved = CLARIFY.resolve(CLARIFY.confirm("cancel_order", request="cancel 48213"), answer)
    assert isinstance(resolved, Clarification) and resolved.kind == "acknowledge"
    assert resolved.question.startswith("All right, I have not done anything")


@pytest.mark.parametrize("answer", ["please track it instead", "where is it?", "yes but change the address first"])
def test_anything_else_is_no_answer_to_a_confirmation(answer):
    assert CLARIFY.resolve(CLARIFY.confirm("cancel_order", request="cancel 48213"), answer) is None


def test_an_answer_picks_an_offered_action_by_number_by_its_words_or_as_the_router_reads_it():
    question = CLARIFY.choose(CLARIFY.reference_candidates, request="order no 55102")
    assert question.question == "What would you like me to do with order 55102: track it, change it or cancel it?"
    assert CLARIFY.resolve(question, "2").label == "change_order"
    assert CLARIFY.resolve(question, "the third one").label == "cancel_order"
    assert CLARIFY.resolve(question, "cancel it please").text == "order no 55102. cancel it please"
    assert CLARIFY.resolve(question, "where is it", best_label="track_order").label == "track_order"
    assert CLARIFY.resolve(question, "I want a refund", best_label="get_refund") is None, "a new request"


def test_a_target_named_in_answer_to_which_order_completes_the_request_without_the_others():
    question = CLARIFY.which("cancel_order", request="cancel order 53090 (my number is 48213)", consent=True,
                             options=["53090", "48213"])  # fmt: skip
    assert question.question == "Which order should I cancel: 53090 or 48213?"
    resolved = CLARIFY.resolve(question, "53090")
    assert resolved.label == "cancel_order" and resolved.consent == "requested"
    assert "48213" not in resolved.text and "53090" in resolved.text


# The example router: the real classifier and act detector.


@pytest.fixture(scope="module")
def router():
    from agentgraph.graphs.customer_support import support_router

    return support_router()


@pytest.mark.slow
@pytest.mark.parametrize("message", WRITES_AGAINST_THE_WORDS)
def test_a_message_against_a_write_never_reaches_it(router, message):
    verdict = router.decide(message)
    assert verdict.consent is None, (verdict.outcome, verdict.write)
    assert verdict.route != "action"


@pytest.mark.slow
def test_no_hand_written_non_request_reaches_a_write(router):
    non_requests = [json.loads(line)["text"] for line in (BENCHMARK_DATA / "non_requests.jsonl").open()]
    reached = [text for text in non_requests if router.decide(text).consent is not None]
    assert len(non_requests) > 300 and reached == []


@pytest.mark.slow
@pytest.mark.parametrize("message", ["order no 55102", "55102", "my order id is 73310", "hi, order number 48213 pls"])
def test_a_bare_order_number_is_clarified_with_the_actions_it_can_have(router, message):
    verdict = router.decide(message)
    assert (verdict.route, verdict.clarification.kind) == ("clarify", "choose")
    assert verdict.clarification.candidates == ["track_order", "change_order", "cancel_order"]
    assert verdict.clarification.question.startswith("What would you like me to do with order ")


@pytest.mark.slow
@pytest.mark.parametrize("answer", ["don't cancel it!", "dont change it, cancel it", "no no, cancel mat karo"])
def test_an_answer_that_declines_agrees_to_no_write_even_when_it_names_one(router, answer):
    question = router.decide("order no 48213").clarification
    verdict = router.decide(answer, pending=question)
    assert verdict.consent is None and verdict.route == "clarify"
    assert verdict.clarification.question.startswith("All right, I have not done anything")


@pytest.mark.slow
@pytest.mark.parametrize("answer", ["yes", "ok", "haan", "yes please do it"])
def test_a_yes_to_the_confirmation_of_a_fragment_agrees_to_that_write(router, answer):
    question = router.decide("cancel 48213").clarification
    verdict = router.decide(answer, pending=question)
    assert (verdict.route, verdict.label, verdict.consent.how, verdict.text) == ("action", "cancel_order", "confirmed",
                                                                                 "cancel 48213")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("message", ["cancel 48213", "48213 cancel pls", "cancel ordr"])
def test_a_write_asked_by_a_fragment_is_confirmed_first(router, message):
    verdict = router.decide(message)
    assert verdict.consent is None and verdict.clarification.kind in ("confirm", "choose")
    assert "cancel_order" in verdict.clarification.candidates


@pytest.mark.slow
@pytest.mark.parametrize(
    ("message", "intent"),
    [
        ("wher is my pakage 10001??", "track_order"),
        ("can u tell me when its going to be delivred", "delivery_period"),
        ("refnd status for ordr 10001 pls", "track_refund"),
        ("i forgt my pasword", "recover_password"),
        ("mera order kab aayega", "delivery_period"),
        ("i wnat to cancle my order 48213 plz", "cancel_order"),
    ],
)
def test_a_typod_or_code_mixed_request_is_read_as_its_intent(router, message, intent):
    verdict = router.decide(message)
    assert verdict.top_label == intent and not verdict.escalated


@pytest.mark.slow
@pytest.mark.parametrize(
    ("message", "intent"),
    [("I want to cancel order 48213", "cancel_order"), ("please cancel my order 48213, I bought it twice", "cancel_order"),
     ("I need a refund of $20 for order 10001", "get_refund"), ("delete my account", "delete_account")],
)  # fmt: skip
def test_an_explicit_write_request_still_runs_with_the_customers_consent(router, message, intent):
    verdict = router.decide(message)
    assert (verdict.route, verdict.label, verdict.consent.how) == ("action", intent, "requested")


# The example graph, turn after turn on one thread.


@pytest.fixture
def support(embedded_slm, tmp_path):
    from agentgraph.graphs.customer_support import CustomerSupportParts, compose

    parts = CustomerSupportParts(data_dir=tmp_path, slm=embedded_slm, llm=answering_llm())
    yield parts, compose(parts)
    assert parts.llm.calls == [], "none of these turns may reach the LLM"


def turns(graph, thread: str, *messages: str):
    from agentgraph.running import run_turn

    return [run_turn(graph, message, thread_id=thread) for message in messages]


@pytest.mark.slow
def test_a_bare_order_number_then_the_action_chosen_runs_that_action_on_that_order(support):
    parts, graph = support
    question, done = turns(graph, "bare-id", "order no 48213", "cancel it")

    assert (
        question.route == "clarify"
        and question.llm_calls == 0
        and "track it, change it or cancel it" in question.response
    )
    assert (done.route, done.intent, done.llm_calls) == ("action", "cancel_order", 0)
    assert done.response.startswith("Order 48213 is cancelled")
    assert parts.shop.count_writes("cancel_order") == 1


@pytest.mark.slow
def test_a_confirmed_fragment_writes_once_and_a_declined_one_never(support):
    parts, graph = support
    asked, declined = turns(graph, "declined", "cancel order 48213", "no")
    assert asked.response == "Shall I cancel order 48213?" and declined.response.startswith("All right, I have not")
    assert parts.shop.count_writes() == 0

    asked, confirmed = turns(graph, "confirmed", "cancel order 48213", "yes please")
    assert confirmed.response.startswith("Order 48213 is cancelled") and confirmed.llm_calls == 0
    assert parts.shop.count_writes("cancel_order") == 1


@pytest.mark.slow
@pytest.mark.parametrize("message", ["my order 48213 got cancelled yesterday, thanks", "Do NOT cancel order 48213",
                                     "Can I cancel order 48213?"])  # fmt: skip
def test_in_the_graph_a_statement_refusal_or_question_names_the_order_and_nothing_is_written(support, message):
    parts, graph = support
    [turn] = turns(graph, "no-write", message)

    assert turn.route == "clarify" and turn.llm_calls == 0
    assert parts.shop.count_writes() == 0
    assert parts.shop.order_status("C1001", "48213")["status"] == "processing"


@pytest.mark.slow
def test_the_order_named_in_answer_to_which_order_is_the_one_acted_on(support):
    parts, graph = support
    asked, done = turns(graph, "which", "I need to cancel my order", "48213")

    assert asked.response.startswith("Which order should I cancel? Your recent orders:")
    assert done.response.startswith("Order 48213 is cancelled") and parts.shop.count_writes("cancel_order") == 1


@pytest.mark.slow
def test_greetings_and_thanks_get_a_template_reply_and_never_the_llm(support):
    _, graph = support
    hello, thanks = turns(graph, "social", "hi", "ok thanks")

    assert hello.response.startswith("Hello! I can track orders") and thanks.route == "clarify"
    assert hello.llm_calls == thanks.llm_calls == 0
