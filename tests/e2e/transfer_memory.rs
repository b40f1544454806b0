//! Large files pass through the host, never through the module's memory. With the
//! step's memory capped at [`CAP_MIB`] MiB (the module's whole linear memory, heap and
//! stack), files several times that size go out and come in with every byte intact: a
//! OneDrive download and upload-session upload, an Outlook attachment sent through an
//! upload session, a Google Drive resumable upload. The module names a workspace file
//! or byte range and the host streams it; had the module read the bytes, the cap would
//! stop the step with `memory_limit_exceeded`, as it does (the control) for an
//! attachment small enough to go inline, which the module does read and encode.
//!
//! Host memory for 100 MB transfers is measured in `just bench`, not asserted here.

use crate::gmail_send::{GoogleSetup, pseudo_random};
use flow8_tests::microsoft::{Microsoft, pattern};
use serde_json::json;

/// The module's memory cap in these steps.
const CAP_MIB: u64 = 4;
/// Each file is this many times the cap.
const TIMES_THE_CAP: u64 = 6;

fn capped() -> Option<serde_json::Value> {
    Some(json!({"memory_mib": CAP_MIB}))
}

fn big_len() -> usize {
    (CAP_MIB * TIMES_THE_CAP * 1024 * 1024) as usize + 12_345
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedrive_and_outlook_move_files_larger_than_the_module_memory() {
    let ms = Microsoft::start(&[
        "Files.Read",
        "Files.ReadWrite",
        "Mail.Send",
        "Mail.ReadWrite",
    ]);
    let link = ms.connect("microsoft").await;
    let ws = ms.workspace("big");
    let n = big_len();

    // A download streamed to the workspace.
    let remote = pattern(n, 21);
    ms.graph.put_drive_file("/Archive/big.bin", remote.clone());
    let (status, v) = ms
        .step_with_limits(
            "onedrive-download",
            Some("big"),
            json!({"link_id": link, "path": "/Archive/big.bin", "save_as": "/down.bin"}),
            capped(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["size"], n);
    assert!(
        std::fs::read(ws.join("down.bin")).unwrap() == remote,
        "downloaded bytes identical"
    );

    // An upload session, its chunks streamed from the workspace.
    let local = pattern(n, 22);
    std::fs::write(ws.join("up.bin"), &local).unwrap();
    let (status, v) = ms
        .step_with_limits(
            "onedrive-upload",
            Some("big"),
            json!({"link_id": link, "file_path": "/up.bin", "path": "/Uploads/up.bin"}),
            capped(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["upload"], "upload_session");
    assert!(
        ms.graph.drive_file("/Uploads/up.bin").unwrap() == local,
        "uploaded bytes identical"
    );

    // A mail whose attachment goes through an upload session.
    let (status, v) = ms
        .step_with_limits(
            "outlook-send-mail",
            Some("big"),
            json!({"link_id": link, "to": ["ann@example.com"], "subject": "Big", "text": "attached",
                "attachments": [{"file_path": "/up.bin"}]}),
            capped(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["attachments"][0]["upload"], "upload_session");
    let sent = ms.graph.sent_mail();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].attachments[0].bytes == local,
        "attachment bytes identical"
    );

    // The control: an attachment small enough to go inline is read and base64-encoded
    // by the module, and under the same cap that does not fit.
    let inline = pattern(2_900_000, 23);
    std::fs::write(ws.join("inline.bin"), &inline).unwrap();
    let (status, v) = ms
        .step_with_limits(
            "outlook-send-mail",
            Some("big"),
            json!({"link_id": link, "to": ["ann@example.com"], "subject": "Inline", "text": "attached",
                "attachments": [{"file_path": "/inline.bin"}]}),
            capped(),
        )
        .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (422, Some("memory_limit_exceeded")),
        "{v}"
    );
    assert_eq!(ms.graph.sent_mail().len(), 1, "nothing more was sent");
    // Without the cap the same mail goes.
    let (status, v) = ms
        .step(
            "outlook-send-mail",
            Some("big"),
            json!({"link_id": link, "to": ["ann@example.com"], "subject": "Inline", "text": "attached",
                "attachments": [{"file_path": "/inline.bin"}]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["attachments"][0]["upload"], "inline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drive_upload_larger_than_the_module_memory_is_streamed_by_the_host() {
    let s = GoogleSetup::start().await;
    let ws = s.workspace("big");
    let bytes = pseudo_random(big_len(), 24);
    std::fs::write(ws.join("big.bin"), &bytes).unwrap();
    let (status, v) = s
        .step_with_limits(
            "google-drive-upload",
            json!({"link_id": s.link_id, "file_path": "/big.bin", "name": "big.bin"}),
            Some("big"),
            capped(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["size"], bytes.len());
    let files = s.google.files();
    assert!(files[0].bytes == bytes, "uploaded bytes identical");
}
