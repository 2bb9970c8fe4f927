//! What `sub`, `pub` and `req` share: finding the broker (as nodes do) and connecting.

use std::time::Duration;

use anyhow::Context;
use discovery::{BrokerChoice, Discovery};
use nodes::client::{Client, ConnectOptions, Messages};
use proto::Encoding;
use tokio_util::sync::CancellationToken;

/// How long a tool waits for mDNS to find a broker.
const FIND_WAIT: Duration = Duration::from_secs(5);

/// Flags every tool takes to reach the broker.
#[derive(clap::Args, Debug)]
pub struct Reach {
    /// The broker's WebSocket address (ws:// or wss://). Without it the broker is found over
    /// mDNS (or, with --no-mdns, ws://127.0.0.1:8765 is used).
    #[arg(short, long, env = "BREADBOARD_BROKER")]
    pub broker: Option<String>,
    /// Over mDNS, use the broker with this name (default: the first one found).
    #[arg(long, conflicts_with = "broker")]
    pub broker_name: Option<String>,
    /// Speak MessagePack instead of JSON (JSON is what people read).
    #[arg(long)]
    pub msgpack: bool,
    #[command(flatten)]
    pub mdns: super::MdnsArgs,
    #[command(flatten)]
    pub access: super::access::AccessArgs,
}

/// A connection to the broker, and the discovery daemon used to find it (shut down on close).
pub struct Connection {
    pub client: Client,
    pub messages: Messages,
    mdns: Option<Discovery>,
}

impl Connection {
    /// Closes the connection and stops discovery (sending goodbyes).
    pub async fn close(self) {
        self.client.close().await;
        if let Some(mdns) = self.mdns {
            mdns.shutdown().await;
        }
    }
}

impl Reach {
    /// Finds the broker and connects.
    ///
    /// # Errors
    /// When no broker is found in time or the connection fails.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let encoding = if self.msgpack {
            Encoding::MsgPack
        } else {
            Encoding::Json
        };
        let mut options = self.access.apply(ConnectOptions::with_encoding(encoding))?;
        let mut mdns = None;
        let url = match &self.broker {
            Some(url) => url.clone(),
            None => match self.mdns.start()? {
                None => nodes::DEFAULT_BROKER.to_string(),
                Some(found) => {
                    let choice = find(&found, self.broker_name.clone()).await?;
                    mdns = Some(found);
                    // Its advertised certificate, unless --ca or --fingerprint say otherwise.
                    options = options.pinning_discovered(choice.fingerprint);
                    choice.url
                }
            },
        };
        let (client, messages) = Client::connect(&url, options)
            .await
            .with_context(|| format!("cannot connect to the broker at {url}"))?;
        tracing::debug!(%url, "connected");
        Ok(Connection {
            client,
            messages,
            mdns,
        })
    }
}

/// The broker mDNS finds first (or the one named `wanted`).
async fn find(mdns: &Discovery, wanted: Option<String>) -> anyhow::Result<BrokerChoice> {
    let stop = CancellationToken::new();
    let only = wanted
        .clone()
        .map_or(discovery::Wanted::Any, discovery::Wanted::Only);
    let mut choice = discovery::follow_brokers(mdns, only, stop.clone())?;
    let found = tokio::time::timeout(FIND_WAIT, choice.wait_for(Option::is_some)).await;
    stop.cancel();
    let what = wanted.map_or("a broker".to_string(), |w| format!("the broker {w:?}"));
    let found = found
        .map_err(|_| {
            anyhow::anyhow!(
                "no {what} found over mDNS within {FIND_WAIT:?}; give --broker ws://host:port"
            )
        })?
        .map_err(|_| anyhow::anyhow!("mDNS stopped while looking for {what}"))?;
    found.clone().context("no broker found")
}

/// Reads a command-line value as JSON, or else as a string: `1` is a number, `hello` a
/// string, `'"1"'` the string "1".
pub fn parse_data(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn data_is_json_else_a_string() {
        assert_eq!(parse_data("1"), json!(1));
        assert_eq!(parse_data("{\"a\":[true]}"), json!({"a": [true]}));
        assert_eq!(parse_data("hello world"), json!("hello world"));
        assert_eq!(parse_data("\"1\""), json!("1"));
        assert_eq!(parse_data(""), json!(""));
    }
}
