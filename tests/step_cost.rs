//! Time and memory of one meta-step on real episodes (32 tasks, 5-way 1-shot, 1 query,
//! 1 inner step), second order first so the peak-memory reading is its own.
//! Figures only; speed targets live in the benchmark, not in tests.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use candle_core::{DType, Device};
use fewshot_e2e::{omniglot, peak_rss_mib, source_or_skip};
use fewshot_meta::{Engine, InnerLoop, Maml, MamlSettings, Order};
use fewshot_model::{ConvNetConfig, init};
use fewshot_tasks::{DrawingSplit, EpisodeSpec, Protocol, Sampler};
use rand::SeedableRng;

#[test]
fn meta_step_cost_on_real_episodes() {
    let Some(source) = source_or_skip("meta_step_cost_on_real_episodes") else {
        return;
    };
    let data = omniglot(&source);
    let spec = EpisodeSpec { n_way: 5, k_shot: 1, n_query: 1, drawing_split: DrawingSplit::Any };
    let sampler = Sampler::new(Protocol::Course.splits(0).train, spec).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let config = ConvNetConfig::omniglot(5);
    let params = init(&config, 0, DType::F32, &Device::Cpu).unwrap();
    let before = peak_rss_mib().unwrap_or(f64::NAN);
    // TASK_CHUNKS=1,4 also measures the candle engine with those chunk sizes.
    let chunks: Vec<usize> = std::env::var("TASK_CHUNKS")
        .ok()
        .map(|s| s.split(',').map(|c| c.parse().unwrap()).collect())
        .unwrap_or_default();
    let candle = chunks.iter().map(|&task_chunk| (Order::Second, Engine::Candle { task_chunk }));
    let cases = [(Order::Second, Engine::Native)].into_iter().chain(candle).chain([(Order::First, Engine::Native)]);
    for (order, engine) in cases {
        let settings = MamlSettings { engine, ..MamlSettings::new(InnerLoop::new(0.4, 1, order), 1e-3) };
        let mut maml = Maml::new(config, &params.clone().into(), settings).unwrap();
        let mut times = Vec::new();
        for _ in 0..4 {
            let episodes: Vec<_> = (0..32).map(|_| sampler.sample(&mut rng)).collect();
            let batch = data.batch(&episodes, DType::F32, &Device::Cpu).unwrap();
            let start = Instant::now();
            let stats = maml.meta_step(&batch).unwrap();
            times.push(start.elapsed().as_secs_f64());
            assert!(stats.loss.is_finite());
        }
        times.remove(0); // warm-up
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        fewshot_e2e::report(&format!(
            "{order:?}-order meta-step ({engine:?} engine), 32 tasks 5-way 1-shot 1 query 1 inner step: median {median:.3} s ({:.1} tasks/s), peak RSS {:.0} MiB (before: {before:.0} MiB)",
            32.0 / median,
            peak_rss_mib().unwrap_or(f64::NAN)
        ));
        if order == Order::Second {
            let peak = peak_rss_mib().unwrap_or(0.0);
            assert!(peak < 2048.0, "second-order meta-step of 32 tasks peaked at {peak:.0} MiB");
        }
    }
}
