//! Who may do what, end to end over sockets: credentials on the upgrade and in `hello`,
//! permission refusals that keep the connection, and a reload that takes back what it no
//! longer allows. (The whole table of permission cases, with real Python and browser clients,
//! is in the root package's `tests/auth.rs`.)

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::harness::{assert_err, hello, publish, sample, sub, Broker, Client, End, WAIT};

const TOKEN: &str = "pin-secret-token";
const ADMIN: &str = "admin-secret-token";

fn file_text(pin_subscribe: &str, with_admin: bool) -> String {
    let phc = broker::auth::hash_token(TOKEN).expect("a hash");
    let admin = broker::auth::hash_token(ADMIN).expect("a hash");
    let mut text = format!(
        "[users.pin-1]\ntokens = [\"{phc}\"]\npublish = [\"pin/%u/#\"]\nsubscribe = {pin_subscribe}\n\n"
    );
    if with_admin {
        text.push_str(&format!(
            "[users.admin]\ntokens = [\"{admin}\"]\nnames = [\"*\"]\npublish = [\"#\"]\nsubscribe = [\"#\", \"$SYS/#\"]\n\n"
        ));
    }
    text.push_str("[anonymous]\nsubscribe = [\"pin/+/state\"]\n");
    text
}

fn write(file: &tempfile::NamedTempFile, text: &str) {
    std::fs::write(file.path(), text).expect("write the auth file");
}

fn auth_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(text.as_bytes()).expect("write the auth file");
    file
}

/// A value of `/metrics`, read with the admin's token.
async fn admin_metric(broker: &Broker, name: &str) -> f64 {
    let page = broker.http_get(&format!("/metrics?token={ADMIN}")).await;
    assert_eq!(page.status, 200, "{}", page.head);
    sample(&page.body, name).unwrap_or_else(|| panic!("no {name} in /metrics"))
}

async fn with_token(broker: &Broker, token: &str) -> Client {
    Client::json(&format!("{}/?token={token}", broker.url())).await
}

#[tokio::test]
async fn wrong_credentials_on_the_upgrade_get_401_and_are_counted() {
    let file = auth_file(&file_text("[\"pin/#\"]", true));
    let (broker, _auth) = Broker::with_auth(file.path());
    let url = format!("{}/?token=wrong", broker.url());
    let refused = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("an answer in time");
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected HTTP 401, got {other:?}"),
    }
    assert_eq!(
        admin_metric(&broker, "breadboard_auth_failures_total").await,
        1.0
    );
    // A right token from the same address still works (after its wait).
    let mut pin = with_token(&broker, TOKEN).await;
    publish(&mut pin, "pin/pin-1/state", json!(1), 1).await;
}

#[tokio::test]
async fn refusals_keep_the_connection_and_anonymous_clients_get_their_section() {
    let file = auth_file(&file_text("[\"pin/#\"]", true));
    let (broker, _auth) = Broker::with_auth(file.path());
    let mut pin = with_token(&broker, TOKEN).await;
    let got = pin
        .call(json!({"op": "pub", "topic": "pin/pin-2/state", "data": 1, "id": 1}))
        .await;
    assert_err(&got, Some(1), "forbidden", &"another pin's topic");
    let got = pin.call(json!({"op": "sub", "topic": "#", "id": 2})).await;
    assert_err(&got, Some(2), "forbidden", &"# is wider than pin/#");
    hello(&mut pin, "pin-1", "pin", 3).await;
    publish(&mut pin, "pin/pin-1/state", json!(1), 4).await;

    let mut anon = Client::json(&broker.url()).await;
    sub(&mut anon, "pin/+/state", 1).await;
    let got = anon
        .call(json!({"op": "pub", "topic": "pin/x/state", "data": 1, "id": 2}))
        .await;
    assert_err(&got, Some(2), "forbidden", &"anonymous may not publish");
    let got = anon
        .call(json!({"op": "hello", "name": "pin-1", "id": 3}))
        .await;
    assert_err(&got, Some(3), "forbidden", &"a name bound to a user");
    assert_eq!(
        admin_metric(&broker, "breadboard_errors_total{code=\"forbidden\"}").await,
        4.0
    );
}

#[tokio::test]
async fn a_hello_token_authenticates_and_a_wrong_one_closes_with_1008() {
    let file = auth_file(&file_text("[\"pin/#\"]", false));
    let (broker, _auth) = Broker::with_auth(file.path());
    let mut c = Client::json(&broker.url()).await;
    let got = c
        .call(json!({"op": "hello", "name": "pin-1", "token": TOKEN, "id": 1}))
        .await;
    assert_eq!(got, json!({"op": "ok", "id": 1}));
    // Frames after the hello are judged as the user's.
    publish(&mut c, "pin/pin-1/state", json!(0), 2).await;

    let mut bad = Client::json(&broker.url()).await;
    let got = bad
        .call(json!({"op": "hello", "name": "pin-1", "token": "nope", "id": 1}))
        .await;
    assert_err(&got, Some(1), "auth_failed", &"wrong hello token");
    assert_eq!(bad.wait_end(WAIT, 4).await, Some(End::Close(Some(1008))));
}

#[tokio::test]
async fn a_reload_drops_what_it_no_longer_allows_and_disconnects_removed_users() {
    let file = auth_file(&file_text("[\"pin/#\", \"clock/#\"]", true));
    let (broker, auth) = Broker::with_auth(file.path());
    let mut pin = with_token(&broker, TOKEN).await;
    sub(&mut pin, "clock/#", 1).await;
    sub(&mut pin, "pin/+/state", 2).await;
    let mut admin = with_token(&broker, ADMIN).await;
    sub(&mut admin, "$SYS/#", 1).await;

    // A file that does not parse: the rules in force stay.
    write(&file, "[users.pin-1\n");
    assert!(auth.reload().is_err());
    publish(&mut admin, "clock/tick", json!(1), 2).await;
    let got = pin.recv().await;
    assert_eq!(got["topic"], "clock/tick");

    // clock/# no longer allowed for pin-1; admin removed.
    write(&file, &file_text("[\"pin/#\"]", false));
    auth.reload().unwrap();
    let got = pin.recv().await;
    assert_err(&got, None, "forbidden", &"the dropped subscription");
    assert!(
        got["message"].as_str().unwrap().contains("clock/#"),
        "{got}"
    );
    assert_eq!(admin.wait_end(WAIT, 16).await, Some(End::Close(Some(1008))));

    // The subscription that stayed still delivers; the dropped one does not.
    let mut other = with_token(&broker, TOKEN).await;
    hello(&mut other, "pin-1", "pin", 1).await;
    publish(&mut other, "pin/pin-1/state", json!(1), 2).await;
    let got = pin.recv().await;
    assert_eq!(got["topic"], "pin/pin-1/state", "{got}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn metrics_need_a_user_allowed_to_read_broker_stats() {
    let file = auth_file(&file_text("[\"pin/#\"]", true));
    let (broker, _auth) = Broker::with_auth(file.path());
    assert_eq!(broker.http_get("/metrics").await.status, 401);
    assert_eq!(
        broker
            .http_get(&format!("/metrics?token={TOKEN}"))
            .await
            .status,
        403
    );
    let ok = broker.http_get(&format!("/metrics?token={ADMIN}")).await;
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains("breadboard_auth_failures_total"));
    let me = broker.http_get(&format!("/whoami?token={TOKEN}")).await;
    let me: serde_json::Value = serde_json::from_str(&me.body).unwrap();
    assert_eq!(me["user"], "pin-1");
    assert_eq!(me["publish"]["allow"], json!(["pin/pin-1/#"]));
    assert_eq!(broker.http_get("/healthz").await.status, 200);
}
