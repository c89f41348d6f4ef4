//! Limits per client of the cluster listener, so one node cannot starve
//! the others: a token bucket of requests (an average rate and a burst) and
//! a count of requests in flight (a blob transfer counts until its body is
//! sent). Over either: 429 with `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Clients remembered before idle ones are forgotten.
const MAX_CLIENTS: usize = 4096;

pub struct Limits {
    rate: f64,
    burst: f64,
    concurrency: usize,
    clients: Mutex<HashMap<String, Client>>,
}

struct Client {
    tokens: f64,
    at: Instant,
    in_flight: Arc<Semaphore>,
}

/// Why a request was refused, and when to come back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Rate { retry_after: Duration },
    Concurrency,
}

impl Limits {
    /// `rate` requests per second (0: none), `burst`, `concurrency` in
    /// flight (0: none).
    pub fn new(rate: u32, burst: u32, concurrency: u32) -> Limits {
        Limits {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            concurrency: concurrency as usize,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a request of `client`: the permit is held until the response
    /// is sent (`None` when there is no concurrency limit).
    pub fn admit(&self, client: &str) -> Result<Option<OwnedSemaphorePermit>, Refused> {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(client) {
            // Forget clients with nothing in flight and a full bucket.
            let (rate, burst, concurrency) = (self.rate, self.burst, self.concurrency);
            clients.retain(|_, c| {
                let refilled = c.tokens + now.duration_since(c.at).as_secs_f64() * rate;
                c.in_flight.available_permits() < concurrency || (rate > 0.0 && refilled < burst)
            });
        }
        let c = clients.entry(client.to_string()).or_insert_with(|| Client {
            tokens: self.burst,
            at: now,
            in_flight: Arc::new(Semaphore::new(self.concurrency.max(1))),
        });
        if self.rate > 0.0 {
            c.tokens =
                (c.tokens + now.duration_since(c.at).as_secs_f64() * self.rate).min(self.burst);
            c.at = now;
            if c.tokens < 1.0 {
                let wait = (1.0 - c.tokens) / self.rate;
                return Err(Refused::Rate {
                    retry_after: Duration::from_secs_f64(wait.ceil().max(1.0)),
                });
            }
        }
        let permit = if self.concurrency > 0 {
            Some(
                c.in_flight
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Refused::Concurrency)?,
            )
        } else {
            None
        };
        if self.rate > 0.0 {
            c.tokens -= 1.0;
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_burst_and_concurrency_per_client() {
        let l = Limits::new(1, 3, 2);
        let a1 = l.admit("a").unwrap();
        let a2 = l.admit("a").unwrap();
        // Two in flight: a third waits for one to end.
        assert_eq!(l.admit("a").unwrap_err(), Refused::Concurrency);
        // Another client is not held up by a.
        let _b = l.admit("b").unwrap();
        drop(a1);
        let _a3 = l.admit("a").unwrap();
        drop(a2);
        // The burst of 3 is spent: come back in a second.
        match l.admit("a").unwrap_err() {
            Refused::Rate { retry_after } => assert_eq!(retry_after, Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        let unlimited = Limits::new(0, 0, 0);
        for _ in 0..1000 {
            assert!(unlimited.admit("x").unwrap().is_none());
        }
    }
}
