//! `commerce-mesh events tail`: follows the order event stream and prints
//! each event as one JSON line, so an operator can watch orders flow. Reads
//! with plain `XREAD` (no consumer group): watching acknowledges nothing and
//! takes nothing from the services' consumers.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use commerce_proto::events::v1::OrderEvent;
use commerce_proto::prost::Message;

/// Follow the order event stream as JSON lines.
#[derive(Debug, Parser)]
#[command(name = "commerce-mesh events tail")]
pub struct TailArgs {
    /// Redis holding the stream.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The mesh's Redis prefix.
    #[arg(long, env = "REDIS_PREFIX", default_value = "commerce")]
    redis_prefix: String,
    /// Start with the last N events already in the stream (0: only new ones).
    #[arg(long, default_value_t = 10)]
    last: usize,
    /// Stop after printing this many events (0: follow until interrupted).
    #[arg(long, default_value_t = 0)]
    count: usize,
}

/// Runs `events tail` with `args` (the program name first).
pub fn run(args: Vec<std::ffi::OsString>) -> ExitCode {
    let args = match TailArgs::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("events tail: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tail(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("events tail: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let stream = format!(
        "{}:{}",
        args.redis_prefix,
        order_orchestrator::relay::STREAM
    );
    let mut redis = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let mut printed = 0usize;
    // The last N entries first, oldest first; then everything after them.
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(args.last.max(1))
        .query_async(&mut redis)
        .await?;
    let mut cursor = last.ids.first().map_or("0-0".to_owned(), |e| e.id.clone());
    if args.last > 0 {
        for entry in last.ids.iter().rev() {
            print(entry)?;
            printed += 1;
            if args.count > 0 && printed >= args.count {
                return Ok(());
            }
        }
    }
    loop {
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(Duration::from_secs(5).as_millis() as u64)
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&cursor)
            .query_async(&mut redis)
            .await?;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                print(&entry)?;
                cursor = entry.id.clone();
                printed += 1;
                if args.count > 0 && printed >= args.count {
                    return Ok(());
                }
            }
        }
    }
}

fn print(entry: &redis::streams::StreamId) -> anyhow::Result<()> {
    let bytes: Vec<u8> = entry
        .get("event")
        .ok_or_else(|| anyhow::anyhow!("stream entry {} has no `event` field", entry.id))?;
    let event = OrderEvent::decode(bytes.as_slice())?;
    let mut json = order_orchestrator::events::to_json(&event);
    if let Some(object) = json.as_object_mut() {
        object.insert("stream_id".to_owned(), entry.id.clone().into());
    }
    println!("{json}");
    Ok(())
}
