"""/metrics scraped and parsed with prometheus-client's own parser; /healthz and /readyz."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from bot.config import Settings
from tests.fakes.openai_server import ErrorReply, FakeOpenAI
from tests.helpers import Relay, free_port, running_relay

API_KEY = "metrics-key-0123456789"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(relay: Relay, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of /metrics, by name and sorted labels."""
    async with relay.session.get("/metrics", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def ask(relay: Relay, prompt: str, user: str) -> int:
    """POST /ask_gpt and return the status."""
    async with relay.session.post("/ask_gpt", json={"prompt": prompt, "user": user}) as response:
        await response.read()
        return response.status


async def test_metrics_count_messages_latency_tokens_and_errors(
    make_settings: Callable[..., Settings], fake_openai: FakeOpenAI
) -> None:
    settings = make_settings(http_port=free_port())
    async with running_relay(settings) as relay:
        before = await scrape(relay)
        assert before[("gptrelay_queue_depth", ())] == 0
        for i in range(3):
            assert await ask(relay, f"question {i}", f"user{i}") == 200
        fake_openai.enqueue(ErrorReply(500, "upstream exploded", "server_error"))
        assert await ask(relay, "this one fails", "user9") == 502
        samples = await scrape(relay)

    assert samples[("gptrelay_messages_received_total", (("platform", "http"),))] == 4
    answered = (("outcome", "answered"), ("platform", "http"))
    failed = (("outcome", "failed"), ("platform", "http"))
    assert samples[("gptrelay_messages_handled_total", answered)] == 3
    assert samples[("gptrelay_messages_handled_total", failed)] == 1
    assert samples[("gptrelay_errors_total", (("kind", "server"),))] == 1
    assert samples[("gptrelay_model_latency_seconds_count", (("stage", "total"),))] == 3
    assert samples[("gptrelay_model_latency_seconds_count", (("stage", "first_token"),))] == 3
    assert samples[("gptrelay_tokens_per_answer_count", (("direction", "completion"),))] == 3
    assert samples[("gptrelay_tokens_per_answer_sum", (("direction", "prompt"),))] > 0
    assert samples[("gptrelay_conversations_in_flight", ())] == 0


async def test_metrics_need_the_api_key_when_one_is_set_but_probes_do_not(
    make_settings: Callable[..., Settings], fake_openai: FakeOpenAI
) -> None:
    settings = make_settings(http_port=free_port(), api_key=API_KEY)
    async with running_relay(settings) as relay:
        async with relay.session.get("/metrics") as response:
            assert response.status == 401
        samples = await scrape(relay, {"Authorization": f"Bearer {API_KEY}"})
        assert ("gptrelay_queue_depth", ()) in samples
        for path in ("/healthz", "/readyz"):
            async with relay.session.get(path) as response:
                assert response.status == 200, path


async def test_readyz_checks_the_store_and_the_model_backend(
    make_settings: Callable[..., Settings], fake_openai: FakeOpenAI
) -> None:
    settings = make_settings(http_port=free_port())
    async with running_relay(settings) as relay:
        async with relay.session.get("/readyz") as response:
            body = await response.json()
            assert response.status == 200
        assert body == {"status": "ready", "checks": {"accepting": "ok", "store": "ok", "model": "ok"}}
        assert any(r.path == "/v1/models" for r in fake_openai.requests)

        await relay.runtime.store.close()  # the database goes away
        async with relay.session.get("/readyz") as response:
            body = await response.json()
            assert response.status == 503
        assert body["status"] == "not ready"
        assert body["checks"]["store"] != "ok"
        async with relay.session.get("/healthz") as response:
            assert response.status == 200  # alive, just not ready


async def test_readyz_reports_an_unreachable_model_without_details(
    make_settings: Callable[..., Settings],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    settings = make_settings(http_port=free_port(), openai_base_url=dead)
    async with running_relay(settings) as relay, relay.session.get("/readyz") as response:
        body = await response.json()
        assert response.status == 503
    assert body["checks"]["model"] == "connection"
    assert body["checks"]["store"] == "ok"
    assert "127.0.0.1" not in str(body)
