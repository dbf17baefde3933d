//! How long to wait before trying again: doubling pauses up to a ceiling, the one
//! policy of the bridge's session supervisor and the cache's warm starts.

use std::time::Duration;

/// Doubling pauses from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Pauses of `first`, `2 × first`, ... up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            next: first.min(max),
            max,
        }
    }

    /// The pause to take now; the next one is twice as long, up to the ceiling.
    pub fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Starts again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_ceiling_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let pauses: Vec<u64> = (0..5).map(|_| b.pause().as_millis() as u64).collect();
        assert_eq!(pauses, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.pause(), Duration::from_millis(500));
    }
}
