//! The google-sheets module: one module, four operations of the Sheets API v4
//! (developers.google.com/sheets/api/reference/rest), chosen by the input's `operation`:
//!
//! - `create`: `POST /v4/spreadsheets` (a title, optional sheet titles);
//! - `append`: `POST /v4/spreadsheets/{id}/values/{range}:append` (rows after the table
//!   in `range`; `insertDataOption` `INSERT_ROWS` by default);
//! - `read`: `GET /v4/spreadsheets/{id}/values/{range}`;
//! - `write`: `PUT /v4/spreadsheets/{id}/values/{range}`.
//!
//! `append` and `write` send `valueInputOption`: `RAW` (the default here: values are
//! stored as given, so text that looks like a formula stays text) or `USER_ENTERED`
//! (parsed as if typed into the UI: formulas, dates, numbers). The host attaches the
//! token.

use flow8_sdk::http::Request;
use flow8_sdk::{Credential, Error, Manifest, Module};
use google_common::{BINDING, Roots, encode};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[allow(dead_code)]
    link_id: String,
    operation: String,
    #[serde(default)]
    spreadsheet_id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    sheet_titles: Vec<String>,
    #[serde(default)]
    range: Option<String>,
    #[serde(default)]
    values: Option<Vec<Vec<Value>>>,
    #[serde(default)]
    value_input_option: Option<String>,
    #[serde(default)]
    insert_data_option: Option<String>,
    #[serde(default)]
    value_render_option: Option<String>,
}

fn need<'a>(v: &'a Option<String>, field: &str, op: &str) -> Result<&'a str, Error> {
    v.as_deref()
        .ok_or_else(|| Error::invalid_input(format!("`{op}` needs `{field}`")))
}

/// Method, path and query (after the root) and body of `input`'s call.
pub fn plan(input: &Input) -> Result<(&'static str, String, Option<Value>), Error> {
    let op = input.operation.as_str();
    let values_path = |suffix: &str| -> Result<String, Error> {
        let id = need(&input.spreadsheet_id, "spreadsheet_id", op)?;
        let range = need(&input.range, "range", op)?;
        // A1 notation keeps `!` and `:` literal; a sheet name's spaces and quotes are
        // escaped.
        Ok(format!(
            "/v4/spreadsheets/{}/values/{}{suffix}",
            encode(id, b""),
            encode(range, b"!:")
        ))
    };
    let rows = || -> Result<Value, Error> {
        let values = input
            .values
            .as_ref()
            .ok_or_else(|| Error::invalid_input(format!("`{op}` needs `values`")))?;
        Ok(json!({"range": input.range, "majorDimension": "ROWS", "values": values}))
    };
    let input_option = input.value_input_option.as_deref().unwrap_or("RAW");
    Ok(match op {
        "create" => {
            let title = need(&input.title, "title", op)?;
            let mut body = json!({"properties": {"title": title}});
            if !input.sheet_titles.is_empty() {
                body["sheets"] = input
                    .sheet_titles
                    .iter()
                    .map(|t| json!({"properties": {"title": t}}))
                    .collect();
            }
            ("POST", "/v4/spreadsheets".into(), Some(body))
        }
        "append" => {
            let insert = input.insert_data_option.as_deref().unwrap_or("INSERT_ROWS");
            (
                "POST",
                format!(
                    "{}?valueInputOption={input_option}&insertDataOption={insert}",
                    values_path(":append")?
                ),
                Some(rows()?),
            )
        }
        "write" => (
            "PUT",
            format!("{}?valueInputOption={input_option}", values_path("")?),
            Some(rows()?),
        ),
        "read" => {
            let render = input
                .value_render_option
                .as_deref()
                .unwrap_or("FORMATTED_VALUE");
            (
                "GET",
                format!(
                    "{}?majorDimension=ROWS&valueRenderOption={render}",
                    values_path("")?
                ),
                None,
            )
        }
        other => return Err(Error::invalid_input(format!("unknown operation `{other}`"))),
    })
}

/// The output of each operation, from Sheets' answer.
fn output(op: &str, v: &Value) -> Value {
    match op {
        "create" => json!({
            "spreadsheetId": v["spreadsheetId"],
            "spreadsheetUrl": v["spreadsheetUrl"],
            "title": v["properties"]["title"],
            "sheets": v["sheets"].as_array().map(|s| s.iter().map(|x| x["properties"]["title"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
        }),
        "append" => {
            let u = &v["updates"];
            json!({
                "spreadsheetId": v["spreadsheetId"],
                "tableRange": v["tableRange"],
                "updatedRange": u["updatedRange"],
                "updatedRows": u["updatedRows"].as_u64().unwrap_or(0),
                "updatedColumns": u["updatedColumns"].as_u64().unwrap_or(0),
                "updatedCells": u["updatedCells"].as_u64().unwrap_or(0),
            })
        }
        "write" => json!({
            "spreadsheetId": v["spreadsheetId"],
            "updatedRange": v["updatedRange"],
            "updatedRows": v["updatedRows"].as_u64().unwrap_or(0),
            "updatedColumns": v["updatedColumns"].as_u64().unwrap_or(0),
            "updatedCells": v["updatedCells"].as_u64().unwrap_or(0),
        }),
        // Sheets leaves out `values` for an empty range, and trailing empty cells.
        _ => json!({
            "range": v["range"],
            "majorDimension": v["majorDimension"],
            "values": if v["values"].is_array() { v["values"].clone() } else { json!([]) },
        }),
    }
}

struct GoogleSheets;

impl Module for GoogleSheets {
    type Input = Input;
    type Output = Value;

    fn manifest() -> Manifest {
        let id = json!({"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[A-Za-z0-9_-]+$"});
        let cell = json!({"type": ["string", "number", "boolean", "null"]});
        Manifest::new("google-sheets", env!("CARGO_PKG_VERSION"))
            .description("Google Sheets: create a spreadsheet, append rows, read a range, write a range (valueInputOption RAW or USER_ENTERED).")
            .input_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["link_id", "operation"],
                "properties": {
                    "link_id": {"type": "string", "minLength": 1},
                    "operation": {"enum": ["create", "append", "read", "write"]},
                    "spreadsheet_id": id,
                    "title": {"type": "string", "minLength": 1, "maxLength": 1024},
                    "sheet_titles": {"type": "array", "maxItems": 200, "items": {"type": "string", "minLength": 1, "maxLength": 100}},
                    "range": {"type": "string", "minLength": 1, "maxLength": 512},
                    "values": {"type": "array", "maxItems": 100000, "items": {"type": "array", "maxItems": 18278, "items": cell}},
                    "value_input_option": {"enum": ["RAW", "USER_ENTERED"]},
                    "insert_data_option": {"enum": ["INSERT_ROWS", "OVERWRITE"]},
                    "value_render_option": {"enum": ["FORMATTED_VALUE", "UNFORMATTED_VALUE", "FORMULA"]}
                }
            }))
            .credential(
                Credential::oauth_link(BINDING, "google")
                    .scopes(["https://www.googleapis.com/auth/spreadsheets"])
                    .input_field("link_id"),
            )
            .allowed_host("https://sheets.googleapis.com")
    }

    fn execute(input: Input) -> Result<Value, Error> {
        let roots = Roots::of_link()?;
        let (method, path, body) = plan(&input)?;
        let mut request =
            Request::new(method, &format!("{}{path}", roots.sheets)).credential(BINDING);
        if let Some(b) = &body {
            request = request.json(b)?;
        }
        let resp = google_common::send("Sheets", &request)?;
        let v = google_common::json("Sheets", &resp)?;
        Ok(output(&input.operation, &v))
    }
}

flow8_sdk::export_module!(GoogleSheets);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> Input {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn each_operation_has_its_call() {
        let (m, p, b) = plan(&input(
            json!({"link_id": "l", "operation": "append", "spreadsheet_id": "s1",
            "range": "'Q1 Sales'!A1:C1", "values": [["a", 1, true]]}),
        ))
        .unwrap();
        assert_eq!(m, "POST");
        assert_eq!(
            p,
            "/v4/spreadsheets/s1/values/%27Q1%20Sales%27!A1:C1:append?valueInputOption=RAW&insertDataOption=INSERT_ROWS"
        );
        assert_eq!(b.unwrap()["values"], json!([["a", 1, true]]));
        let (m, p, b) = plan(&input(
            json!({"link_id": "l", "operation": "read", "spreadsheet_id": "s1", "range": "A1:B2"}),
        ))
        .unwrap();
        assert_eq!((m, b), ("GET", None));
        assert!(p.starts_with("/v4/spreadsheets/s1/values/A1:B2?"));
        assert!(
            plan(&input(
                json!({"link_id": "l", "operation": "write", "spreadsheet_id": "s1", "range": "A1"})
            ))
            .is_err()
        );
        assert!(plan(&input(json!({"link_id": "l", "operation": "create"}))).is_err());
    }
}
