//! `breadboard req <topic> <data>`: sends a request and prints the first reply, like
//! `nats req`.

use std::time::Duration;

use super::tool::{parse_data, Reach};

/// Flags of `breadboard req`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The topic to send the request to.
    pub topic: String,
    /// The data: JSON if it parses, else a string.
    #[arg(default_value = "null")]
    pub data: String,
    /// Seconds to wait for a reply.
    #[arg(long, default_value = "5", value_parser = super::parse_seconds)]
    pub timeout: Duration,
    /// Print the whole reply frame as JSON (topic, data, from).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reach: Reach,
}

/// Sends the request and prints the reply's data (or the whole message with `--json`).
///
/// # Errors
/// When no reply comes within `--timeout` (exit status 1), or the broker cannot be reached.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let conn = args.reach.connect().await?;
    let reply = conn
        .client
        .request(args.topic.as_str(), parse_data(&args.data), args.timeout)
        .await;
    conn.close().await;
    match reply {
        Ok(msg) if args.json => {
            println!("{}", serde_json::to_string(&proto::ServerFrame::Msg(msg))?)
        }
        Ok(msg) => println!("{}", msg.data),
        Err(nodes::Error::TimedOut) => anyhow::bail!(
            "no reply on {} within {:?} (is anything subscribed to it?)",
            args.topic,
            args.timeout
        ),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
