//! `breadboard pub <topic> [data]`: publishes one message, or one per line of a file or of
//! standard input, like `mosquitto_pub`.

use std::path::PathBuf;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::tool::{parse_data, Reach};

/// Flags of `breadboard pub`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The topic to publish to.
    pub topic: String,
    /// The data: JSON if it parses (`1`, `{"a":1}`, `"text"`), else a string. Without it (or
    /// with `-`), each line of standard input is one message.
    pub data: Option<String>,
    /// Keep the value as the topic's retained value (`null` clears it).
    #[arg(short, long)]
    pub retain: bool,
    /// Publish each line of this file as one message.
    #[arg(short, long, conflicts_with = "data")]
    pub file: Option<PathBuf>,
    /// Say hello with this name (messages then carry `from`).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub reach: Reach,
}

/// Publishes.
///
/// # Errors
/// When the broker cannot be reached or refuses a message (each is acknowledged).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let conn = args.reach.connect().await?;
    if let Some(name) = &args.name {
        conn.client.hello(name, Some("pub")).await?;
    }
    let publish = |data: serde_json::Value| {
        let client = conn.client.clone();
        let topic = args.topic.clone();
        async move {
            if args.retain {
                client.publish_retained(topic, data).await
            } else {
                client.publish(topic, data).await
            }
        }
    };
    let result: anyhow::Result<u64> = async {
        match (&args.data, &args.file) {
            (Some(data), None) if data != "-" => {
                publish(parse_data(data)).await?;
                Ok(1)
            }
            (_, Some(path)) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?;
                publish_lines(BufReader::new(file), publish).await
            }
            _ => publish_lines(BufReader::new(tokio::io::stdin()), publish).await,
        }
    }
    .await;
    conn.close().await;
    let sent = result?;
    tracing::debug!(sent, "published");
    Ok(())
}

/// Publishes each non-empty line; returns how many.
async fn publish_lines<R, F, Fut>(reader: BufReader<R>, publish: F) -> anyhow::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    F: Fn(serde_json::Value) -> Fut,
    Fut: std::future::Future<Output = nodes::Result<()>>,
{
    let mut lines = reader.lines();
    let mut sent = 0;
    let mut number = 0;
    while let Some(line) = lines.next_line().await? {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        publish(parse_data(&line))
            .await
            .with_context(|| format!("line {number}"))?;
        sent += 1;
    }
    Ok(sent)
}
