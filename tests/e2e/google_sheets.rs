//! google-sheets end to end against the Google fake (setup in `gmail_send.rs`): create a
//! spreadsheet, write a range with `USER_ENTERED`, append rows with `RAW`, read them
//! back; what Sheets received (method, A1 range in the path, `valueInputOption`, body);
//! Sheets' errors under flow8's names; a link of another service refused; the CLI.

use crate::gmail_send::GoogleSetup;
use flow8_tests::google_fake::GoogleFailure;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spreadsheet_is_created_written_appended_and_read() {
    let s = GoogleSetup::start().await;
    let (status, v) = s
        .step("google-sheets", json!({"link_id": s.link_id, "operation": "create", "title": "Sales 2026", "sheet_titles": ["Q1 Sales", "Notes"]}), None)
        .await;
    assert_eq!(status, 200, "{v}");
    let out = &v["output"];
    let id = out["spreadsheetId"].as_str().unwrap().to_string();
    assert_eq!(out["title"], "Sales 2026");
    assert_eq!(out["sheets"], json!(["Q1 Sales", "Notes"]));
    assert_eq!(
        out["spreadsheetUrl"],
        format!("https://docs.google.com/spreadsheets/d/{id}/edit")
    );
    let call = s.google.calls().pop().unwrap();
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("POST", "/v4/spreadsheets")
    );
    assert_eq!(
        call.json(),
        json!({"properties": {"title": "Sales 2026"}, "sheets": [{"properties": {"title": "Q1 Sales"}}, {"properties": {"title": "Notes"}}]})
    );

    // Write with USER_ENTERED: numbers typed as text become numbers.
    let write = json!({"link_id": s.link_id, "operation": "write", "spreadsheet_id": id, "range": "'Q1 Sales'!A1:C2",
        "values": [["Name", "Amount", "Paid"], ["Ada", "12.5", true]], "value_input_option": "USER_ENTERED"});
    let (status, v) = s.step("google-sheets", write, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["output"],
        json!({"spreadsheetId": id, "updatedRange": "'Q1 Sales'!A1:C2", "updatedRows": 2, "updatedColumns": 3, "updatedCells": 6})
    );
    let call = s.google.calls().pop().unwrap();
    assert_eq!(call.method, "PUT");
    assert_eq!(
        call.path,
        format!("/v4/spreadsheets/{id}/values/%27Q1%20Sales%27!A1:C2")
    );
    assert_eq!(
        call.query_param("valueInputOption").as_deref(),
        Some("USER_ENTERED")
    );
    assert_eq!(
        call.json()["values"],
        json!([["Name", "Amount", "Paid"], ["Ada", "12.5", true]])
    );
    assert_eq!(call.json()["majorDimension"], "ROWS");

    // Append with RAW (the default): text that looks like a formula stays text.
    let append = json!({"link_id": s.link_id, "operation": "append", "spreadsheet_id": id, "range": "'Q1 Sales'!A1:C1",
        "values": [["Bob", "=1+2", false], ["Eve", 7, null]]});
    let (status, v) = s.step("google-sheets", append.clone(), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["updatedRange"], "'Q1 Sales'!A3:C4", "{v}");
    assert_eq!(v["output"]["tableRange"], "'Q1 Sales'!A1:C2", "{v}");
    assert_eq!(v["output"]["updatedRows"], 2);
    let call = s.google.calls().pop().unwrap();
    assert_eq!(
        (call.method.as_str(), call.path.clone()),
        (
            "POST",
            format!("/v4/spreadsheets/{id}/values/%27Q1%20Sales%27!A1:C1:append")
        )
    );
    assert_eq!(call.query_param("valueInputOption").as_deref(), Some("RAW"));
    assert_eq!(
        call.query_param("insertDataOption").as_deref(),
        Some("INSERT_ROWS")
    );
    let grid = s.google.sheet(&id, "Q1 Sales").unwrap();
    assert_eq!(grid[1][1], json!(12.5), "USER_ENTERED parsed the number");
    assert_eq!(grid[2][1], json!("=1+2"), "RAW kept the text");

    // Read it back (formatted values are strings; trailing empty cells are left out).
    let read = json!({"link_id": s.link_id, "operation": "read", "spreadsheet_id": id, "range": "'Q1 Sales'!A1:C10"});
    let (status, v) = s.step("google-sheets", read.clone(), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["output"],
        json!({"range": "'Q1 Sales'!A1:C10", "majorDimension": "ROWS", "values": [
            ["Name", "Amount", "Paid"], ["Ada", "12.5", "TRUE"], ["Bob", "=1+2", "FALSE"], ["Eve", "7"]]})
    );
    let call = s.google.calls().pop().unwrap();
    assert_eq!(call.method, "GET");
    assert!(call.body.is_empty());
    // An empty range reads as no rows.
    let (status, v) = s
        .step("google-sheets", json!({"link_id": s.link_id, "operation": "read", "spreadsheet_id": id, "range": "Notes!A1:B2"}), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output"]["values"], json!([]));

    // Errors: no such spreadsheet (404) is invalid_input; 429 and 500 are waited out;
    // 403 insufficient scope; missing input sends nothing.
    let mut missing = read.clone();
    missing["spreadsheet_id"] = json!("nOsUcHsHeEt");
    let answer = s.step("google-sheets", missing, None).await;
    GoogleSetup::assert_error(&answer, 400, "invalid_input");
    s.google.inject([
        GoogleFailure::retry_after(429, 1),
        GoogleFailure::status(500),
    ]);
    let (status, v) = s.step("google-sheets", read.clone(), None).await;
    assert_eq!(status, 200, "{v}");
    s.google.inject([GoogleFailure::status(403)]);
    let answer = s.step("google-sheets", read.clone(), None).await;
    GoogleSetup::assert_error(&answer, 403, "insufficient_scope");
    let n = s.google.calls().len();
    for bad in [
        json!({"link_id": s.link_id, "operation": "append", "spreadsheet_id": id, "range": "A1"}),
        json!({"link_id": s.link_id, "operation": "read", "spreadsheet_id": id}),
        json!({"link_id": s.link_id, "operation": "create"}),
        json!({"link_id": s.link_id, "operation": "delete", "spreadsheet_id": id}),
        json!({"link_id": s.link_id, "operation": "write", "spreadsheet_id": id, "range": "A1", "values": [["x"]], "value_input_option": "FORMULA"}),
    ] {
        let answer = s.step("google-sheets", bad.clone(), None).await;
        GoogleSetup::assert_error(&answer, 400, "invalid_input");
    }
    assert_eq!(s.google.calls().len(), n, "bad input reached Sheets");
    // A link of another service: refused.
    let mut wrong = read.clone();
    wrong["link_id"] = json!(s.microsoft_link_id);
    let answer = s.step("google-sheets", wrong, None).await;
    GoogleSetup::assert_error(&answer, 403, "access_denied");
    assert_eq!(s.google.calls().len(), n);

    // From the CLI.
    let ws = s.workspace("sheets-cli");
    let out = s.run_module("google-sheets", &append, &ws).ok_json();
    assert_eq!(out["updatedRange"], "'Q1 Sales'!A5:C6", "{out}");
    let out = s.run_module("google-sheets", &read, &ws).ok_json();
    assert_eq!(out["values"].as_array().unwrap().len(), 6, "{out}");
}
