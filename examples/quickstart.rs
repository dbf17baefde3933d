//! A small service that keeps a table of accounts in memory with tidemark.
//!
//! It starts a cache of `public.accounts` (typed key and row), answers lookups from
//! memory, writes through PostgreSQL with its instance id in the `owner` column, and
//! reacts to changes, telling its own writes apart from everyone else's.
//!
//! Run the development stack and the bridge for the table, then:
//!
//! ```text
//! psql -h 127.0.0.1 -U postgres test -c "CREATE TABLE accounts (id int8 PRIMARY KEY, \
//!     name text NOT NULL, balance numeric(12,2) NOT NULL, owner text)"
//! cargo run -p tidemark-bridge -- --postgres postgres://postgres@127.0.0.1/test \
//!     --kafka 127.0.0.1:9092 --tables public.accounts &
//! cargo run --example quickstart
//! ```

use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use tidemark_client::{Cache, Origin};
use tidemark_examples::Stack;

/// The primary key: deserialises from `{"id": 42}` (or the bare `42`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
struct AccountId(i64);

/// A row of `accounts`. `numeric` arrives as an exact string.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Account {
    id: i64,
    name: String,
    balance: String,
    owner: Option<String>,
}

/// Runs the quickstart service.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    stack: Stack,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tidemark_examples::init_logging("info");
    let args = Args::parse();

    // Returns once the cache holds the whole table and has caught up with the topic.
    let accounts: Cache<AccountId, Account> = Cache::builder()
        .postgres(&args.stack.postgres)
        .kafka(&args.stack.kafka)
        .table("public.accounts")
        .owner_column("owner")
        .build()
        .await?;
    let me = accounts.instance_id();
    println!("instance {me}: {} accounts in memory", accounts.len());

    // React to changes as they are applied.
    let mut changes = accounts.subscribe();
    let watcher = tokio::spawn(async move {
        while let Ok(change) = changes.recv().await {
            match (&change.value, change.origin) {
                (Some(a), Origin::OwnWrite) => {
                    println!("my own write came back: {} -> {}", a.name, a.balance)
                }
                (Some(a), _) => println!("account {} is now {}", a.id, a.balance),
                (None, _) => println!("account {:?} is gone", change.key),
            }
        }
    });

    // Write through PostgreSQL, stamped with this instance's id.
    let (pg, conn) = tokio_postgres::connect(&args.stack.postgres, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let id: i64 = 1_000_000 + (me.as_u128() % 1_000_000) as i64;
    pg.execute(
        "INSERT INTO accounts (id, name, balance, owner) VALUES ($1, 'quickstart', 10, $2) \
         ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + 1, owner = $2",
        &[&id, &me.to_string()],
    )
    .await?;

    // Reads are in-memory and concurrent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = accounts.stats();
        println!(
            "{} accounts; account {id}: {:?}; lag {} records",
            s.rows,
            accounts.get(&AccountId(id)).map(|a| a.balance.clone()),
            s.lag_records
        );
    }
    accounts.shutdown().await;
    let _ = watcher.await;
    Ok(())
}
