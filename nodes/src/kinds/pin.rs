//! The pin: a digital pin driven by chance. On each tick from the clock it draws `sequence`
//! bits (each `0` with probability `chance`, else `1`), steps its level through them, publishes
//! every change of level on `pin/<name>/state` (retained, so that a late subscriber learns the
//! current level), and replies to the tick with the bits:
//!
//! ```text
//! [ pin-1 ] tick 0 -> [1, 0, 1]
//! ```
//!
//! Data: the state is the level as a JSON integer, `0` or `1`; the reply is the array of bits.
//! The level starts at `0`, published (retained) in `setup` so that every buzzer knows where it
//! starts, and published again after a reconnection (a restarted broker forgot it).
//!
//! A `seed` makes the draw reproducible, for tests and demos. (The original sketch assigned
//! the chance to the sequence length; here each option keeps its own meaning.)

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kinds::clock::TICK_TOPIC;
use crate::node::{show, Context, HookResult, Node};
use crate::Message;

/// How a pin draws its bits. [`PinOptions::default`]: 3 bits a tick, each 0 with
/// probability 0.6, a fresh random seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PinOptions {
    /// Bits drawn on each tick.
    pub sequence: u32,
    /// Probability that a drawn bit is 0, from 0 to 1.
    pub chance: f64,
    /// Seed of the random draw, for a reproducible run; `None`: seeded by the OS.
    pub seed: Option<u64>,
}

impl Default for PinOptions {
    fn default() -> Self {
        Self {
            sequence: 3,
            chance: 0.6,
            seed: None,
        }
    }
}

/// The topic a pin publishes its level on.
pub fn state_topic(name: &str) -> String {
    format!("pin/{name}/state")
}

/// Steps a level through bits: the new level and every change, in order.
pub fn step(mut level: u8, bits: &[u8]) -> (u8, Vec<u8>) {
    let mut changes = Vec::new();
    for &bit in bits {
        if bit != level {
            level = bit;
            changes.push(bit);
        }
    }
    (level, changes)
}

/// The 0 → 1 transitions of a pin's level as it steps through `bits` from its starting level
/// (0): how many times a buzzer that heard the pin from the start buzzes. Tests check the
/// buzzer's output against the bits the pin printed with it.
pub fn rises(bits: &[u8]) -> usize {
    let (_, changes) = step(0, bits);
    changes.iter().filter(|&&change| change == 1).count()
}

/// The pin node.
#[derive(Debug)]
pub struct Pin {
    options: PinOptions,
    rng: StdRng,
    /// The current level, 0 or 1.
    level: u8,
}

impl Pin {
    /// A pin at level 0.
    pub fn new(options: PinOptions) -> Self {
        let rng = match options.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            options,
            rng,
            level: 0,
        }
    }

    /// Draws the bits of one tick.
    pub fn draw(&mut self) -> Vec<u8> {
        (0..self.options.sequence)
            .map(|_| u8::from(!self.rng.random_bool(self.options.chance)))
            .collect()
    }

    /// The current level.
    pub fn level(&self) -> u8 {
        self.level
    }
}

impl Node for Pin {
    async fn setup(&mut self, ctx: &mut Context) -> HookResult {
        ctx.publish_retained(state_topic(ctx.name()), self.level)
            .await?;
        ctx.subscribe(TICK_TOPIC).await?;
        Ok(())
    }

    async fn on_message(&mut self, ctx: &mut Context, msg: Message) -> HookResult {
        if msg.topic.as_str() != TICK_TOPIC {
            return Ok(());
        }
        let bits = self.draw();
        ctx.print(format!(
            "tick {} -> {}",
            msg.data,
            show(&bits.clone().into())
        ));
        let (level, changes) = step(self.level, &bits);
        self.level = level;
        let topic = state_topic(ctx.name());
        for change in changes {
            ctx.publish_retained(&topic, change).await?;
        }
        ctx.reply(&msg, bits).await?;
        Ok(())
    }

    async fn on_reconnect(&mut self, ctx: &mut Context) -> HookResult {
        ctx.publish_retained(state_topic(ctx.name()), self.level)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(seed: u64, chance: f64) -> Pin {
        Pin::new(PinOptions {
            sequence: 3,
            chance,
            seed: Some(seed),
        })
    }

    #[test]
    fn a_seed_makes_the_draw_reproducible() {
        let (mut a, mut b) = (pin(42, 0.6), pin(42, 0.6));
        let draws_a: Vec<Vec<u8>> = (0..20).map(|_| a.draw()).collect();
        let draws_b: Vec<Vec<u8>> = (0..20).map(|_| b.draw()).collect();
        assert_eq!(draws_a, draws_b);
        assert!(draws_a
            .iter()
            .all(|d| d.len() == 3 && d.iter().all(|&b| b <= 1)));
        let mut c = pin(43, 0.6);
        let draws_c: Vec<Vec<u8>> = (0..20).map(|_| c.draw()).collect();
        assert_ne!(draws_a, draws_c);
    }

    #[test]
    fn chance_is_the_probability_of_a_zero() {
        assert!(pin(1, 1.0).draw().iter().all(|&b| b == 0));
        assert!(pin(1, 0.0).draw().iter().all(|&b| b == 1));
        let mut p = pin(9, 0.6);
        let bits: Vec<u8> = (0..2000).flat_map(|_| p.draw()).collect();
        let zeros = bits.iter().filter(|&&b| b == 0).count() as f64 / bits.len() as f64;
        assert!((0.55..0.65).contains(&zeros), "{zeros}");
    }

    #[test]
    fn sequence_sets_the_number_of_bits() {
        let mut p = Pin::new(PinOptions {
            sequence: 7,
            ..PinOptions::default()
        });
        assert_eq!(p.draw().len(), 7);
    }

    #[test]
    fn stepping_publishes_changes_only() {
        assert_eq!(step(0, &[1, 0, 1]), (1, vec![1, 0, 1]));
        assert_eq!(step(0, &[0, 0, 1]), (1, vec![1]));
        assert_eq!(step(1, &[1, 1, 1]), (1, vec![]));
        assert_eq!(step(1, &[0, 0]), (0, vec![0]));
    }

    #[test]
    fn rises_counts_zero_to_one_from_a_low_start() {
        assert_eq!(rises(&[1, 0, 1]), 2);
        assert_eq!(rises(&[0, 0, 0]), 0);
        assert_eq!(rises(&[1, 1, 0, 0, 1]), 2);
        assert_eq!(rises(&[0, 0]), 0);
    }
}
