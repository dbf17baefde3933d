//! `tidemark-bench`: measures each figure beside its reference in the same run,
//! repeats it, prints a table and writes `BENCHMARKS.md`. Run it with
//! `scripts/bench.sh` on an otherwise idle machine; timings never go into tests.

mod bridge_bench;
mod cache_bench;
mod checkpoint_bench;
mod env;
mod eos_bench;

use std::fmt::Write as _;

use clap::Parser;
use tidemark_examples::Stack;

use bridge_bench::Shape;
use env::{BoxError, Env};

/// Benchmarks of the bridge and the cache, each beside its reference.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    stack: Stack,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Sections to run: throughput, latency, warmstart, fanout, checkpoint,
    /// exactly-once (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,latency,warmstart,fanout,checkpoint,exactly-once"
    )]
    only: Vec<String>,
    /// Rows of the warm-start table (also restarted from a checkpoint).
    #[arg(long, default_value_t = 1_000_000)]
    warm_rows: usize,
    /// Caches that start at once in the checkpoint section's fan-out (0: no fan-out).
    #[arg(long, default_value_t = 200)]
    checkpoint_caches: usize,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: String,
    /// Internal: one warm start of `--load-table` in this process, its figures printed
    /// as JSON (the warm-start section runs each timed load so, in a new process).
    #[arg(long, hide = true, value_enum)]
    load_once: Option<cache_bench::ValueType>,
    #[arg(long, hide = true, default_value = "")]
    load_table: String,
    #[arg(long, hide = true, default_value = "")]
    load_prefix: String,
    #[arg(long, hide = true)]
    load_readers: Option<usize>,
}

/// One line of the result table.
struct Row {
    what: String,
    figure: String,
    reference: String,
    ratio: String,
    target: String,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 20);
    let pg = std::process::Command::new("psql")
        .args(["--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    // scripts/bench.sh names the broker it started; run by hand, say which it is.
    let broker = std::env::var("TIDEMARK_BENCH_BROKER")
        .unwrap_or_else(|_| "not named (set TIDEMARK_BENCH_BROKER)".into());
    format!(
        "{cpu}, {cores} cores, {mem_gib} GiB RAM; {pg}; broker: {broker}; PostgreSQL, broker, \
         bridge, caches and load generators all on this one machine"
    )
}

/// Adds a section's rows, or a row saying it failed (the other sections still count).
fn section(
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
    name: &str,
    result: Result<cache_bench::Section, BoxError>,
) {
    match result {
        Ok(s) => {
            rows.extend(
                s.rows
                    .into_iter()
                    .map(|(what, figure, reference, ratio, target)| Row {
                        what,
                        figure,
                        reference,
                        ratio,
                        target,
                    }),
            );
            notes.extend(s.notes);
        }
        Err(e) => {
            eprintln!("{name} failed: {e}");
            rows.push(Row {
                what: name.to_owned(),
                figure: format!("failed: {e}"),
                reference: "-".into(),
                ratio: "-".into(),
                target: "not measured".into(),
            });
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tidemark_examples::init_logging("warn");
    let args = Args::parse();
    let env = Env {
        postgres: args.stack.postgres.clone(),
        kafka: args.stack.kafka.clone(),
    };
    if let Some(value) = args.load_once {
        return cache_bench::load_once(
            &env,
            value,
            &args.load_table,
            &args.load_prefix,
            args.load_readers,
        )
        .await;
    }
    let want = |s: &str| args.only.iter().any(|o| o == s);
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    if want("throughput") {
        for shape in [
            Shape {
                row_bytes: 100,
                txn_rows: 1,
                total_rows: 100_000,
            },
            Shape {
                row_bytes: 100,
                txn_rows: 100,
                total_rows: 200_000,
            },
            Shape {
                row_bytes: 1000,
                txn_rows: 1,
                total_rows: 100_000,
            },
            Shape {
                row_bytes: 1000,
                txn_rows: 100,
                total_rows: 100_000,
            },
        ] {
            eprintln!("throughput: {shape:?}");
            let t = match bridge_bench::throughput(&env, shape, args.repeat).await {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("throughput {shape:?} failed: {e}");
                    rows.push(Row {
                        what: format!(
                            "bridge throughput, {} B rows, {}-row txns",
                            shape.row_bytes, shape.txn_rows
                        ),
                        figure: format!("failed: {e}"),
                        reference: "-".into(),
                        ratio: "-".into(),
                        target: "not measured".into(),
                    });
                    continue;
                }
            };
            let bound = t.decode_bound.min(t.broker_bound);
            rows.push(Row {
                what: format!(
                    "bridge throughput, {} B rows, {}-row txns",
                    shape.row_bytes, shape.txn_rows
                ),
                figure: format!("{:.0} rows/s", t.bridge),
                reference: format!(
                    "pg_recvlogical {:.0} rows/s; producer {:.0} rows/s",
                    t.decode_bound, t.broker_bound
                ),
                ratio: format!("{:.2} × min", t.bridge / bound),
                target: format!(
                    "≥ 0.8 × min: {}",
                    if t.bridge >= 0.8 * bound {
                        "met"
                    } else {
                        "NOT met"
                    }
                ),
            });
        }
    }
    if want("latency") {
        let percentiles = |l: &bridge_bench::Latency| {
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.p50, l.p99, l.max
            )
        };
        for rate in [1_000u64, 5_000] {
            eprintln!("latency at {rate} txn/s");
            let l = bridge_bench::latency(&env, rate, 15).await?;
            let b = bridge_bench::broker_latency(&env, rate, 15).await?;
            let d = bridge_bench::decode_latency(&env, rate, 15).await?;
            rows.push(Row {
                what: format!(
                    "commit → consumer latency at {rate} txn/s (achieved {:.0}/s; one run of 15 s)",
                    l.achieved
                ),
                figure: percentiles(&l),
                reference: format!(
                    "broker alone, plain producer at {:.0}/s: {}; PostgreSQL alone, commit → pg_recvlogical: {}",
                    b.achieved,
                    percentiles(&b),
                    percentiles(&d)
                ),
                ratio: format!("p99 {:.1} × the broker's", l.p99 / b.p99),
                target: if rate == 5_000 {
                    format!(
                        "p99 ≤ 50 ms: {}",
                        if l.p99 <= 50.0 { "met" } else { "NOT met" }
                    )
                } else {
                    "-".into()
                },
            });
        }
        notes.push(
            "Latency is measured from the commit time the record carries (PostgreSQL's commit timestamp, \
             millisecond resolution) to the moment a consumer polling with `fetch.wait.max.ms=5` receives the \
             record, so it bounds commit → acknowledgement from above. Its reference is the broker's own \
             latency: a plain producer with the bridge's settings sends records of about the same size at the \
             same rate, and the same consumer measures from the producer's timestamp to arrival. A second \
             reference is PostgreSQL's own part: the same writers, with `pg_recvlogical` (test_decoding, commit \
             timestamps) reading the slot, timed from each commit to its COMMIT line's arrival. Each of the \
             three first sends one change end to end and starts the clock only when it arrived, so that \
             connecting and the consumer's first fetch are not counted."
                .to_owned(),
        );
        // The cache at a low rate: between records the consumer's fetch waits on the
        // broker, which is when a watermark refresh that held records back showed.
        let (rate, seconds) = (25u64, 30u64);
        eprintln!("cache latency at {rate} txn/s");
        let c = bridge_bench::cache_latency(&env, rate, seconds).await?;
        let l = bridge_bench::latency(&env, rate, seconds).await?;
        rows.push(Row {
            what: format!(
                "commit → cache latency at {rate} txn/s, 3 partitions (achieved {:.0}/s; one run of {seconds} s)",
                c.achieved
            ),
            figure: percentiles(&c),
            reference: format!(
                "commit → consumer at the same rate (1 partition): {}",
                percentiles(&l)
            ),
            ratio: format!("p99 {:.1} × the consumer's", c.p99 / l.p99),
            target: format!(
                "p99 ≤ 2 × the consumer's: {}",
                if c.p99 <= 2.0 * l.p99 { "met" } else { "NOT met" }
            ),
        });
        notes.push(
            "Commit → cache latency: writers like those of the latency rows insert rows whose `at_us` column the inserting \
             transaction sets with `clock_timestamp()` (just before its commit, so the commit's own time is \
             counted), and a typed cache (`Cache<i64, _>`) of the table, behind a bridge with 3 partitions, \
             measures from it to the moment its change subscription delivers the row, when `Cache::get` \
             returns it. The rate is low on purpose: between records the consumer's fetch waits on the \
             broker (`fetch.wait.max.ms`), and requests on the same connection wait behind it. The follower refreshes the partitions' watermarks every 2 s on the blocking pool. \
             Before 66d0490 it awaited that refresh in its loop, holding every record back meanwhile: with that \
             follower this row measured p99 128.0 ms, 11.8 × the consumer's, on Nov 28 (10.1 ms with the \
             current one in the same hour). The target, 2 × the consumer's p99, is the project's own."
                .to_owned(),
        );
    }
    // The warm-start table, kept for the checkpoint restart when both run.
    let mut warm_table = None;
    if want("warmstart") {
        let w = cache_bench::warm_start(&env, args.warm_rows, args.repeat, want("checkpoint"))
            .await
            .map(|(s, kept)| {
                warm_table = kept;
                s
            });
        section(&mut rows, &mut notes, "warm start", w);
    }
    if want("fanout") {
        let f = cache_bench::fan_out(&env, 50).await;
        section(&mut rows, &mut notes, "fan-out", f);
    }
    if want("checkpoint") {
        let r =
            checkpoint_bench::restart(&env, warm_table.take(), args.warm_rows, args.repeat).await;
        section(&mut rows, &mut notes, "checkpoint restart", r);
        if args.checkpoint_caches > 0 {
            let f = checkpoint_bench::fan_out(&env, args.checkpoint_caches).await;
            section(&mut rows, &mut notes, "checkpoint fan-out", f);
        }
    }

    if want("exactly-once") {
        let e = eos_bench::section(&env, args.repeat, 1_000, 15).await;
        section(&mut rows, &mut notes, "exactly-once", e);
    }

    let mut table = String::from(
        "| benchmark | figure | reference (same run) | ratio | target |\n|---|---|---|---|---|\n",
    );
    for r in &rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} |",
            r.what, r.figure, r.reference, r.ratio, r.target
        );
    }
    println!("\n{table}");
    let mut doc = format!(
        "# Benchmarks\n\nMeasured by `scripts/bench.sh` (the `tidemark-bench` crate) on {date}.\n\n\
         **Machine:** {machine}.\n\nEach figure is the median of {repeat} runs unless it says otherwise, measured \
         beside its reference in the same run. The machine is shared and noisy: read the ratios, not the \
         absolute numbers.\n\n{table}\n",
        date = std::process::Command::new("date").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
        machine = machine(),
        repeat = args.repeat,
    );
    if !notes.is_empty() {
        doc += "## Notes\n\n";
        for n in notes {
            let _ = writeln!(doc, "* {n}");
        }
    }
    doc +=
        "\nWhat the profile showed, what was changed, and what bounds each figure that misses its \
            target: [docs/performance.md](docs/performance.md).\n";
    std::fs::write(&args.out, doc)?;
    eprintln!("wrote {}", args.out);
    Ok(())
}
