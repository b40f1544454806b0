//! openai-chat and anthropic-message end to end through the CLI, against fakes of the
//! two APIs that check the headers each documents: the host attaches the component's
//! key (`Authorization: Bearer` / `x-api-key`) on the component's `base_url` (a
//! compatible gateway; the fakes stand in for it), the requests carry what the input
//! says, errors come back under flow8's names after retries where retrying helps, and
//! the key is in no output, no log and not in the module's memory (the hostile
//! guest's memory scan with an `openai` component attached).

use flow8_tests::ai_fake::{AiFailure, AiFake};
use flow8_tests::{Cli, CliOutput};
use serde_json::{Value, json};

const OPENAI_KEY: &str = "sk-proj-Zx81fakeOpenAIkey0042";
const ANTHROPIC_KEY: &str = "sk-ant-api03-fakeAnthropicKey77";

struct Ai {
    cli: Cli,
    openai: AiFake,
    anthropic: AiFake,
}

fn setup() -> Ai {
    let cli = Cli::new();
    let openai = AiFake::start(OPENAI_KEY);
    let anthropic = AiFake::start(ANTHROPIC_KEY);
    for (name, provider, key, base) in [
        (
            "openai-gw",
            "openai",
            OPENAI_KEY,
            format!("{}/v1", openai.base()),
        ),
        ("claude-gw", "anthropic", ANTHROPIC_KEY, anthropic.base()),
    ] {
        let body = json!({"name": name, "kind": "ai",
            "config": {"provider": provider, "api_key": key, "base_url": base}});
        let out = cli
            .run_with_stdin(&["components", "create", "-"], &body.to_string())
            .ok_json();
        assert!(!out.to_string().contains(key), "{out}");
    }
    Ai {
        cli,
        openai,
        anthropic,
    }
}

impl Ai {
    fn run(&self, module: &str, binding: &str, input: Value) -> CliOutput {
        let path = self.cli.data_dir.path().join("input.json");
        std::fs::write(&path, input.to_string()).unwrap();
        let out = self.cli.run(&[
            "run-module",
            module,
            path.to_str().unwrap(),
            "--bind",
            binding,
            "--allow-loopback",
        ]);
        for key in [OPENAI_KEY, ANTHROPIC_KEY] {
            assert!(
                !out.stdout.contains(key) && !out.stderr.contains(key),
                "the key leaked:\n{}\n{}",
                out.stdout,
                out.stderr
            );
        }
        out
    }

    fn chat(&self, input: Value) -> CliOutput {
        self.run("openai-chat", "openai=openai-gw", input)
    }

    fn message(&self, input: Value) -> CliOutput {
        self.run("anthropic-message", "anthropic=claude-gw", input)
    }
}

fn fail(status: u16, retry_after: Option<u32>) -> AiFailure {
    AiFailure {
        status,
        retry_after,
    }
}

#[test]
fn openai_chat_sends_the_documented_request_and_names_errors() {
    let ai = setup();
    let input = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Summarise INV-001."}],
        "temperature": 0.2, "max_tokens": 200, "response_format": "json_object"
    });
    let out = ai.chat(input.clone()).ok_json();
    assert_eq!(
        out["text"],
        json!({"summary": "invoice due"}).to_string(),
        "{out}"
    );
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})
    );
    let call = ai.openai.calls().last().cloned().unwrap();
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(
        call.body,
        json!({"model": "gpt-4o-mini", "messages": input["messages"], "temperature": 0.2,
            "max_tokens": 200, "response_format": {"type": "json_object"}})
    );

    let short = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_retries": 1});
    // 429 with retry-after, then 503: retried, then the answer.
    ai.openai.inject([fail(429, Some(1)), fail(503, None)]);
    let mut twice = short.clone();
    twice["max_retries"] = json!(2);
    assert_eq!(ai.chat(twice).ok_json()["text"], "Hello from the fake.");
    for (failures, name, needle) in [
        (vec![fail(401, None)], "access_denied", "Incorrect API key"),
        (vec![fail(400, None)], "invalid_input", "must be at most 2"),
        (
            vec![fail(429, Some(1)), fail(429, Some(1))],
            "rate_limit_exceeded",
            "Rate limit reached",
        ),
        (
            vec![fail(500, None), fail(500, None)],
            "upstream_error",
            "server had an error",
        ),
    ] {
        ai.openai.inject(failures);
        let out = ai.chat(short.clone());
        assert_eq!(out.error_name().as_deref(), Some(name), "{}", out.stderr);
        assert!(out.stderr.contains(needle), "{}", out.stderr);
        // The next step runs normally.
        assert_eq!(ai.chat(short.clone()).ok_json()["finish_reason"], "stop");
    }
    // A key the provider does not take: the fake's own check, the same name.
    let path = ai.cli.data_dir.path().join("wrong.json");
    std::fs::write(
        &path,
        json!({"name": "openai-wrong", "kind": "ai", "config": {"provider": "openai",
            "api_key": "sk-wrongwrongwrongwrong", "base_url": format!("{}/v1", ai.openai.base())}})
        .to_string(),
    )
    .unwrap();
    ai.cli
        .run(&["components", "create", path.to_str().unwrap()])
        .ok_json();
    let out = ai.run("openai-chat", "openai=openai-wrong", short.clone());
    assert_eq!(
        out.error_name().as_deref(),
        Some("access_denied"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("sk-wrongwrongwrongwrong"),
        "{}",
        out.stderr
    );

    // The key is not in the module's memory when the host attaches it (and is when the
    // module reads it, so the zero means something).
    let needle: Vec<u8> = OPENAI_KEY.bytes().map(|b| b ^ 0x5a).collect();
    for (read_first, expect_found) in [(false, false), (true, true)] {
        let scan = json!({"attack": "attach_then_scan", "url": format!("{}/v1/chat/completions", ai.openai.base()),
            "credential": "ai", "needle_xor": needle, "read_first": read_first});
        let path = ai.cli.data_dir.path().join("scan.json");
        std::fs::write(&path, scan.to_string()).unwrap();
        let out = ai
            .cli
            .run(&[
                "run-module",
                "hostile",
                path.to_str().unwrap(),
                "--bind",
                "ai=openai-gw",
                "--allow-loopback",
            ])
            .ok_json();
        assert!(
            out["status"].as_u64().is_some(),
            "the attached request went out: {out}"
        );
        assert_eq!(
            out["memory_hits"].as_u64().unwrap() >= 1,
            expect_found,
            "{out}"
        );
    }
    assert_eq!(
        ai.openai.calls().last().unwrap().header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
}

#[test]
fn anthropic_message_sends_the_documented_request_and_names_errors() {
    let ai = setup();
    let input = json!({
        "model": "claude-sonnet-4-5", "system": "One sentence.",
        "messages": [{"role": "user", "content": "Summarise INV-001."}], "max_tokens": 200
    });
    let out = ai.message(input.clone()).ok_json();
    assert_eq!(out["text"], "Hello from the fake.", "{out}");
    assert_eq!(out["stop_reason"], "end_turn");
    assert_eq!(
        out["usage"],
        json!({"input_tokens": 10, "output_tokens": 6})
    );
    let call = ai.anthropic.calls().last().cloned().unwrap();
    assert_eq!(call.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(call.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(call.header("authorization"), None);
    assert_eq!(
        call.body,
        json!({"model": "claude-sonnet-4-5", "system": "One sentence.", "max_tokens": 200,
            "messages": input["messages"]})
    );
    // max_tokens is required by the API: the module sends its default.
    let short = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], "max_retries": 1});
    ai.message(short.clone()).ok_json();
    assert_eq!(
        ai.anthropic.calls().last().unwrap().body["max_tokens"],
        1024
    );

    // 529 overloaded and 429, with retry-after: retried, then the answer.
    let mut twice = short.clone();
    twice["max_retries"] = json!(2);
    ai.anthropic
        .inject([fail(529, Some(1)), fail(429, Some(1))]);
    assert_eq!(ai.message(twice).ok_json()["stop_reason"], "end_turn");
    for (failures, name, needle) in [
        (vec![fail(401, None)], "access_denied", "invalid x-api-key"),
        (
            vec![fail(400, None)],
            "invalid_input",
            "roles must alternate",
        ),
        (
            vec![fail(429, Some(1)), fail(429, Some(1))],
            "rate_limit_exceeded",
            "rate_limit_error",
        ),
        (
            vec![fail(529, None), fail(529, None)],
            "upstream_error",
            "overloaded_error",
        ),
    ] {
        ai.anthropic.inject(failures);
        let out = ai.message(short.clone());
        assert_eq!(out.error_name().as_deref(), Some(name), "{}", out.stderr);
        assert!(out.stderr.contains(needle), "{}", out.stderr);
        assert_eq!(
            ai.message(short.clone()).ok_json()["stop_reason"],
            "end_turn"
        );
    }
    // The key goes only to the component's own hosts: its base_url and
    // api.anthropic.com, never an OpenAI gateway the step names elsewhere.
    let out = ai.run("anthropic-message", "anthropic=openai-gw", short);
    assert_eq!(
        out.error_name().as_deref(),
        Some("access_denied"),
        "{}",
        out.stderr
    );
    assert!(ai.openai.calls().is_empty());
}
