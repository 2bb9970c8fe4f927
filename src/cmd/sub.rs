//! `breadboard sub <filter>...`: prints messages as they arrive, like `mosquitto_sub`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nodes::Message;

use super::tool::Reach;

/// Flags of `breadboard sub`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topic filters (`+` one level, `#` the rest; `$SYS/#` for the broker's own topics).
    #[arg(required = true, value_name = "FILTER")]
    pub filters: Vec<String>,
    /// One JSON object per line (the `msg` frame as the broker sent it), for scripts.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many messages.
    #[arg(short = 'n', long = "count")]
    pub count: Option<u64>,
    /// Stop after this many seconds (with -n: fail if fewer messages came).
    #[arg(long, value_parser = super::parse_seconds)]
    pub timeout: Option<Duration>,
    /// Say hello with this name (the broker then shows this client's presence).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub reach: Reach,
}

/// `HH:MM:SS.mmm` (UTC) of now.
fn clock() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// One readable line: time, topic, data, then who sent it and flags.
pub fn readable(msg: &Message, time: &str) -> String {
    let mut line = format!("{time} {} {}", msg.topic, msg.data);
    if let Some(from) = &msg.from {
        line.push_str(&format!("  (from {from})"));
    }
    if let Some(reply) = &msg.reply {
        line.push_str(&format!("  (reply to {reply})"));
    }
    if msg.retained {
        line.push_str("  [retained]");
    }
    line
}

/// Subscribes and prints.
///
/// # Errors
/// When the broker cannot be reached, refuses a filter, or `-n` messages did not come before
/// `--timeout`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut conn = args.reach.connect().await?;
    if let Some(name) = &args.name {
        conn.client.hello(name, Some("sub")).await?;
    }
    for filter in &args.filters {
        conn.client
            .subscribe(filter.as_str())
            .await
            .with_context(|| format!("cannot subscribe to {filter:?}"))?;
    }
    let shutdown = super::shutdown_on_signal()?;
    let deadline = async {
        match args.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut seen = 0u64;
    let mut stdout = std::io::stdout().lock();
    let outcome = loop {
        if args.count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = &mut deadline => break match args.count {
                Some(n) => Err(anyhow::anyhow!("got {seen} of {n} messages before the timeout")),
                None => Ok(()),
            },
            msg = conn.messages.recv() => match msg {
                Some(msg) => msg,
                None => break Err(anyhow::anyhow!("the broker closed the connection")),
            },
        };
        seen += 1;
        let line = if args.json {
            serde_json::to_string(&proto::ServerFrame::Msg(msg))?
        } else {
            readable(&msg, &clock())
        };
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break Ok(());
        }
    };
    let dropped = conn.client.dropped();
    if dropped > 0 {
        tracing::warn!(dropped, "messages dropped: printing could not keep up");
    }
    conn.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use proto::TopicName;
    use serde_json::json;

    use super::*;

    #[test]
    fn readable_lines_show_sender_and_flags() {
        let msg = Message {
            topic: TopicName::new("pin/pin-1/state").unwrap().into(),
            data: json!(1),
            from: Some("pin-1".into()),
            reply: None,
            retained: true,
        };
        assert_eq!(
            readable(&msg, "12:00:00.000"),
            "12:00:00.000 pin/pin-1/state 1  (from pin-1)  [retained]"
        );
    }
}
