//! A new node type in one file: a thermometer.
//!
//! Every `--period` seconds it reads a (simulated) temperature, publishes it retained on
//! `thermo/<name>/celsius` and prints it; it also answers requests on `thermo/<name>/read`
//! with the current reading.
//!
//! ```text
//! cargo run -p breadboard-nodes --example thermometer -- --broker ws://127.0.0.1:8765
//! breadboard req thermo/thermo-1/read        # from another terminal
//! ```

use std::time::Duration;

use nodes::runtime::{self, BrokerSource, Config};
use nodes::{Context, HookResult, Message, Node};
use tokio_util::sync::CancellationToken;

/// The thermometer's state: what a sketch would keep in globals.
struct Thermometer {
    /// Time between readings.
    period: Duration,
    /// Readings taken so far; drives the simulation.
    readings: u64,
    /// The last reading, in °C.
    celsius: f64,
}

impl Thermometer {
    fn new(period: Duration) -> Self {
        Self {
            period,
            readings: 0,
            celsius: 20.0,
        }
    }

    /// A made-up sensor: a slow wave around 21 °C, rounded to a tenth.
    fn read_sensor(&mut self) -> f64 {
        self.readings += 1;
        let t = 21.0 + 2.0 * (self.readings as f64 / 10.0).sin();
        (t * 10.0).round() / 10.0
    }
}

impl Node for Thermometer {
    /// Once: listen for read requests and start the timer.
    async fn setup(&mut self, ctx: &mut Context) -> HookResult {
        ctx.subscribe(format!("thermo/{}/read", ctx.name())).await?;
        ctx.set_timer(self.period);
        Ok(())
    }

    /// Every period: read and publish (retained, so a newcomer sees the last value at once).
    async fn on_timer(&mut self, ctx: &mut Context) -> HookResult {
        self.celsius = self.read_sensor();
        ctx.publish_retained(format!("thermo/{}/celsius", ctx.name()), self.celsius)
            .await?;
        ctx.print(format!("{:.1} °C", self.celsius));
        Ok(())
    }

    /// On each request: answer with the last reading.
    async fn on_message(&mut self, ctx: &mut Context, msg: Message) -> HookResult {
        ctx.reply(&msg, self.celsius).await?;
        Ok(())
    }
}

/// The command line: `[--broker URL] [--name NAME] [--period SECONDS]`.
struct Args {
    /// The broker's address.
    broker: String,
    /// The node's name.
    name: String,
    /// Time between readings.
    period: Duration,
}

impl Args {
    /// Reads the flags by hand: a node needs no argument parser (a bigger one may want clap).
    fn parse() -> Result<Self, String> {
        let mut args = Self {
            broker: nodes::DEFAULT_BROKER.to_string(),
            name: "thermo-1".to_string(),
            period: Duration::from_secs(1),
        };
        let mut argv = std::env::args().skip(1);
        while let Some(flag) = argv.next() {
            let mut value = || argv.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--broker" => args.broker = value()?,
                "--name" => args.name = value()?,
                "--period" => {
                    let text = value()?;
                    args.period = text
                        .parse::<f64>()
                        .ok()
                        .filter(|secs| *secs > 0.0)
                        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                        .ok_or(format!("--period {text}: not a positive number of seconds"))?;
                }
                _ => {
                    return Err(format!(
                        "unknown flag {flag}; usage: thermometer [--broker URL] [--name NAME] \
                         [--period SECONDS]"
                    ))
                }
            }
        }
        Ok(args)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let config = Config::new(args.name, "thermometer");
    runtime::run(
        Thermometer::new(args.period),
        config,
        BrokerSource::fixed(args.broker),
        shutdown,
    )
    .await?;
    Ok(())
}

/// Runs the thermometer against a real broker (in this process, on a loopback port chosen by
/// the system) and reads it the way any client would.
#[cfg(test)]
mod tests {
    use nodes::{Client, ConnectOptions, Encoding, Output};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn thermometer_publishes_and_answers_against_a_real_broker() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let broker = tokio::spawn(broker::run(
            listener,
            broker::Config::default(),
            shutdown.clone(),
        ));

        let mut config = Config::new("thermo-t", "thermometer");
        config.output = Output::silent();
        let mut node = runtime::spawn(
            Thermometer::new(Duration::from_millis(50)),
            config,
            BrokerSource::fixed(&url),
            shutdown.clone(),
        );
        tokio::time::timeout(WAIT, node.ready())
            .await
            .unwrap()
            .unwrap();

        // A JSON client, as an external tool would be.
        let (client, mut messages) =
            Client::connect(&url, ConnectOptions::with_encoding(Encoding::Json))
                .await
                .unwrap();
        client.subscribe("thermo/+/celsius").await.unwrap();
        let reading = tokio::time::timeout(WAIT, messages.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reading.topic.as_str(), "thermo/thermo-t/celsius");
        assert_eq!(reading.from.as_deref(), Some("thermo-t"));
        let celsius = reading.data.as_f64().unwrap();
        assert!((18.0..24.0).contains(&celsius), "{celsius}");

        let answer = client
            .request("thermo/thermo-t/read", (), WAIT)
            .await
            .unwrap();
        assert!(answer.data.as_f64().is_some(), "{answer:?}");

        shutdown.cancel();
        tokio::time::timeout(WAIT, node.join())
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(WAIT, broker)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
