//! The clock: publishes ticks `0, 1, 2…` on [`TICK_TOPIC`] every `delay`, each as a request,
//! and prints every acknowledgement:
//!
//! ```text
//! [ clock ] > 0
//! [ clock ] < pin-1: [1, 0, 1]
//! ```
//!
//! A tick's data is its number, a JSON integer. Several pins may answer one tick, so the clock
//! collects every reply within the tick's window (until the next tick by default) rather than
//! the first only. With `expect: N` it knows how many answers to wait for: the tick ends as
//! soon as N arrived, and a tick with fewer stops the clock with an error (what the demo uses to
//! fail clearly). A tick that could not be sent (broker away) is sent again, same number, once
//! the clock is back online.

use std::time::Duration;

use crate::error::Error;
use crate::node::{show, Context, HookResult, Node};

/// Where ticks are published.
pub const TICK_TOPIC: &str = "clock/tick";

/// How a clock ticks. [`ClockOptions::default`]: 5 ticks, one a second, no acknowledgement
/// required.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockOptions {
    /// Ticks to send, then stop; 0 ticks forever.
    pub tacks: u64,
    /// Time between ticks.
    pub delay: Duration,
    /// Acknowledgements expected per tick (one per pin). A tick ends as soon as they arrived;
    /// one that gets fewer within its window stops the clock with an error. 0: just print
    /// what arrives.
    pub expect: usize,
    /// How long a tick waits for acknowledgements. `None`: the delay, or at least 5 s when
    /// `expect` is set (see [`ClockOptions::window`]).
    pub timeout: Option<Duration>,
}

impl Default for ClockOptions {
    fn default() -> Self {
        Self {
            tacks: 5,
            delay: Duration::from_secs(1),
            expect: 0,
            timeout: None,
        }
    }
}

impl ClockOptions {
    /// How long one tick collects acknowledgements.
    pub fn window(&self) -> Duration {
        self.timeout.unwrap_or(if self.expect > 0 {
            self.delay.max(Duration::from_secs(5))
        } else {
            self.delay
        })
    }
}

/// The clock node.
#[derive(Debug)]
pub struct Clock {
    options: ClockOptions,
    /// The number of the next tick to send.
    next: u64,
}

impl Clock {
    /// A clock that has not ticked yet.
    pub fn new(options: ClockOptions) -> Self {
        Self { options, next: 0 }
    }

    fn done(&self) -> bool {
        self.options.tacks != 0 && self.next >= self.options.tacks
    }
}

impl Node for Clock {
    async fn setup(&mut self, ctx: &mut Context) -> HookResult {
        if self.done() {
            ctx.stop();
        } else {
            ctx.set_timer(self.options.delay);
        }
        Ok(())
    }

    async fn on_timer(&mut self, ctx: &mut Context) -> HookResult {
        let n = self.next;
        let expect = self.options.expect;
        let window = self.options.window();
        if !ctx.is_online() {
            return Ok(());
        }
        ctx.print(format!("> {n}"));
        let max = (expect > 0).then_some(expect);
        let mut replies = match ctx.request_many(TICK_TOPIC, n, window, max).await {
            Ok(replies) => replies,
            Err(Error::Closed) => {
                tracing::warn!(tick = n, "offline; the tick is sent again once back online");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        loop {
            match replies.next().await {
                Ok(Some(ack)) => {
                    let from = ack.from.as_deref().unwrap_or("?");
                    ctx.print(format!("< {from}: {}", show(&ack.data)));
                }
                Ok(None) | Err(Error::NoResponders) => break,
                Err(Error::Closed) => {
                    tracing::warn!(
                        tick = n,
                        "connection lost; the tick is sent again once back online"
                    );
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let acks = replies.received();
        if acks < expect {
            ctx.fail(format!(
                "tick {n} was acknowledged {acks} time(s) within {window:?}, expected {expect}"
            ));
            return Ok(());
        }
        if acks == 0 {
            tracing::warn!(tick = n, "nobody acknowledged the tick");
        }
        self.next += 1;
        if self.done() {
            ctx.stop();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_defaults_to_the_delay() {
        let o = ClockOptions::default();
        assert_eq!(o.window(), Duration::from_secs(1));
    }

    #[test]
    fn window_is_generous_when_acks_are_expected() {
        let o = ClockOptions {
            expect: 1,
            delay: Duration::from_millis(50),
            ..ClockOptions::default()
        };
        assert_eq!(o.window(), Duration::from_secs(5));
        let o = ClockOptions {
            timeout: Some(Duration::from_millis(300)),
            ..o
        };
        assert_eq!(o.window(), Duration::from_millis(300));
    }

    #[test]
    fn zero_tacks_ticks_forever() {
        let mut c = Clock::new(ClockOptions {
            tacks: 0,
            ..ClockOptions::default()
        });
        c.next = u64::MAX;
        assert!(!c.done());
        let mut c = Clock::new(ClockOptions::default());
        c.next = 5;
        assert!(c.done());
    }
}
