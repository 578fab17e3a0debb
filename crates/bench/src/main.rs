//! One benchmark case of meta-training or evaluation on synthetic data of the real shapes,
//! through the same code path as `fewshot train` / `eval`. Prints one JSON line.
//! Run it through `cargo xtask bench`, which runs every case in its own process (so peak
//! memory is the case's own) and compares with PyTorch.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use anyhow::bail;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use fewshot_meta::{Adaptation, Engine, InnerLoop, Maml, MamlSettings, Order, TaskBatch};
use fewshot_model::{ConvNetConfig, init};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Time one meta-learning case on synthetic data (see cargo xtask bench)")]
struct Args {
    /// `so` (second-order meta-train), `fo` (first-order meta-train), `eval`, or `gemm-peak`
    /// (the engine's matrix-product kernel on large square f32 products, one per thread: the
    /// machine's attainable GFLOP/s for our single-threaded-kernel, task-parallel design).
    #[arg(long)]
    mode: String,
    #[arg(long, default_value_t = 5)]
    n_way: usize,
    #[arg(long, default_value_t = 1)]
    k_shot: usize,
    #[arg(long, default_value_t = 1)]
    q_query: usize,
    #[arg(long, default_value_t = 32)]
    meta_batch: usize,
    /// Inner steps (default: 1 for training, 3 for eval).
    #[arg(long)]
    inner_steps: Option<usize>,
    #[arg(long, default_value_t = 0.4)]
    inner_lr: f64,
    /// Tasks per batched chunk of the candle engine's meta-gradient (default: the library's).
    #[arg(long)]
    task_chunk: Option<usize>,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Tasks in parallel (kernels single-threaded), as `fewshot --threads`.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// `native` (the default fast path) or `candle` (the reference path).
    #[arg(long, default_value = "native")]
    engine: String,
    /// The native engine's convolutions of multi-channel blocks: `winograd` (the default) or
    /// `im2col`.
    #[arg(long, default_value = "winograd")]
    conv: String,
    /// Side of the square input images (28: Omniglot; 84: mini-ImageNet's).
    #[arg(long, default_value_t = 28)]
    image_size: usize,
    /// Input channels (1 gray, 3 colour).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Filters per conv block.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
}

/// FLOPs of the conv and linear layers for one image's forward pass (2 per multiply-add), as
/// the PyTorch reference counts them.
fn forward_flops_per_image(net: &ConvNetConfig) -> f64 {
    let (mut size, mut ch, mut flops) = (net.image_size, net.in_channels, 0usize);
    for _ in 0..net.depth {
        flops += 2 * size * size * net.hidden * ch * 9;
        size /= 2;
        ch = net.hidden;
    }
    (flops + 2 * net.features() * net.n_way) as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: the first thing in main: no other thread exists yet.
    unsafe { fewshot_cli::set_threads(args.threads)? };
    let order = match args.mode.as_str() {
        "so" => Some(Order::Second),
        "fo" => Some(Order::First),
        "eval" => None,
        "gemm-peak" => return gemm_peak(args.threads),
        other => bail!("--mode {other}: expected so, fo, eval or gemm-peak"),
    };
    let inner_steps = args.inner_steps.unwrap_or(if order.is_some() { 1 } else { 3 });
    let net = ConvNetConfig {
        in_channels: args.channels,
        image_size: args.image_size,
        hidden: args.hidden,
        ..ConvNetConfig::omniglot(args.n_way)
    };
    net.validate()?;
    let (c, side) = (args.channels, args.image_size);
    let params = fewshot_meta::MetaParams::from(init(&net, 0, DType::F32, &Device::Cpu)?);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (ns, nq) = (args.n_way * args.k_shot, args.n_way * args.q_query);
    let mut make_batch = || -> anyhow::Result<TaskBatch> {
        let t = args.meta_batch;
        let mut images = |n: usize| {
            Tensor::from_vec(
                (0..t * n * c * side * side).map(|_| rng.random::<f32>()).collect::<Vec<_>>(),
                (t, n, c, side, side),
                &Device::Cpu,
            )
        };
        let labels = |per: usize| {
            Tensor::from_vec(
                (0..t)
                    .flat_map(|_| (0..args.n_way as u32).flat_map(move |c| std::iter::repeat_n(c, per)))
                    .collect::<Vec<_>>(),
                (t, args.n_way * per),
                &Device::Cpu,
            )
        };
        Ok(TaskBatch {
            support_images: images(ns)?,
            support_labels: labels(args.k_shot)?,
            query_images: images(nq)?,
            query_labels: labels(args.q_query)?,
        })
    };
    let batches: Vec<TaskBatch> = (0..4).map(|_| make_batch()).collect::<anyhow::Result<_>>()?;
    let task_chunk = args.task_chunk.unwrap_or(fewshot_meta::DEFAULT_TASK_CHUNK);
    fewshot_model::engine::set_conv_algorithm(match args.conv.as_str() {
        "winograd" => fewshot_model::engine::ConvAlgorithm::Winograd,
        "im2col" => fewshot_model::engine::ConvAlgorithm::Im2col,
        other => bail!("--conv {other}: expected winograd or im2col"),
    });
    let engine = match args.engine.as_str() {
        "native" => Engine::Native,
        "candle" => Engine::Candle { task_chunk },
        other => bail!("--engine {other}: expected native or candle"),
    };
    let mut maml = order
        .map(|order| {
            let inner = InnerLoop::new(args.inner_lr, inner_steps, order);
            Maml::new(net, &params, MamlSettings { engine, ..MamlSettings::new(inner, 1e-3) })
        })
        .transpose()?;
    let mut times = Vec::new();
    for i in 0..args.warmup + args.steps {
        let batch = &batches[i % batches.len()];
        let start = Instant::now();
        match maml.as_mut() {
            Some(m) => {
                m.meta_step(batch)?;
            }
            None => {
                engine.evaluate(&net, &params, batch, &Adaptation::all(args.inner_lr, inner_steps))?;
            }
        }
        if i >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
        if i + 1 == args.warmup {
            fewshot_model::engine::profile::take(); // count the timed steps only
        }
    }
    // With the `profile` feature: the shares of the timed steps' thread time (wall x threads)
    // spent in each kind of the engine's work.
    let time_split = fewshot_model::engine::profile::take().map(|[gemm, im2col, elementwise]| {
        let total = times.iter().sum::<f64>() * args.threads as f64;
        let rest = total - gemm - im2col - elementwise;
        serde_json::json!({
            "gemm": gemm / total, "im2col": im2col / total, "elementwise": elementwise / total, "rest": rest / total,
        })
    });
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let fwd = forward_flops_per_image(&net);
    // Analytic FLOPs per task, in forward-pass units: a backward pass costs 2 (input and
    // weight gradients); second order adds the backward of the inner backward (about 2x it).
    let per_step_support = match order {
        Some(Order::Second) => 1.0 + 2.0 + 4.0 + 2.0,
        _ => 3.0,
    };
    let query_units = if order.is_some() { 3.0 } else { 1.0 };
    let flops_per_task = fwd * (ns as f64 * per_step_support * inner_steps as f64 + nq as f64 * query_units);
    let tasks_per_sec = args.meta_batch as f64 / median;
    let result = serde_json::json!({
        "impl": "fewshot",
        "engine": args.engine,
        "conv": args.conv,
        "mode": if order.is_some() { "train" } else { "eval" },
        "order": match order { Some(Order::Second) => "second", _ => "first" },
        "n_way": args.n_way, "k_shot": args.k_shot, "q_query": args.q_query,
        "meta_batch": args.meta_batch, "inner_steps": inner_steps,
        "threads": args.threads,
        "task_chunk": matches!(engine, Engine::Candle { .. }).then_some(task_chunk),
        "steps": args.steps, "warmup": args.warmup,
        "sec_per_meta_step": median,
        "sec_per_meta_step_min": times[0],
        "sec_per_meta_step_max": times[times.len() - 1],
        "tasks_per_sec": tasks_per_sec,
        "peak_rss_mb": fewshot_cli::peak_rss_mib().unwrap_or(f64::NAN),
        "analytic_flops_per_task": flops_per_task,
        "achieved_gflops_per_sec": flops_per_task * tasks_per_sec / 1e9,
        "time_split": time_split,
    });
    println!("{result}");
    Ok(())
}

/// Side of the square products of `--mode gemm-peak` (large enough to run at the kernel's
/// best: 4 MB per operand).
const PEAK_N: usize = 1024;

/// `threads` threads each multiply two `PEAK_N`-square f32 matrices with the engine's
/// single-threaded kernel ([`fewshot_model::engine::matmul_nn`]), repeatedly; prints the
/// total GFLOP/s of the best of 5 timed rounds.
fn gemm_peak(threads: usize) -> anyhow::Result<()> {
    use fewshot_model::engine::{Out, matmul_nn};
    let n = PEAK_N;
    let operands: Vec<(Vec<f32>, Vec<f32>)> = (0..threads)
        .map(|t| {
            let a = (0..n * n).map(|i| ((i * 7 + t) % 13) as f32 / 13.0).collect();
            let b = (0..n * n).map(|i| ((i * 5 + t) % 11) as f32 / 11.0).collect();
            (a, b)
        })
        .collect();
    let mut outputs: Vec<Vec<f32>> = vec![vec![0f32; n * n]; threads];
    let mut round = || {
        std::thread::scope(|s| {
            for ((a, b), c) in operands.iter().zip(outputs.iter_mut()) {
                s.spawn(move || {
                    for _ in 0..3 {
                        matmul_nn(c, a, b, [n, n, n], Out::Set);
                    }
                });
            }
        });
    };
    round(); // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        round();
        best = best.min(start.elapsed().as_secs_f64());
    }
    // Each round: `threads` threads x 3 products x 2 n^3 FLOPs (thread start-up included).
    std::hint::black_box(&outputs);
    let gflops = (threads * 3) as f64 * 2.0 * (n as f64).powi(3) / best / 1e9;
    println!("{}", serde_json::json!({ "mode": "gemm-peak", "threads": threads, "n": n, "gflops_per_sec": gflops }));
    Ok(())
}
