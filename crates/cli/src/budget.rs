//! What a command will need in memory, estimated from its config before anything is allocated,
//! and checked against what this machine has: an absurd value (`model.hidden = 100000`,
//! `train.meta_batch_size = 100000000000`) is refused at once with the key, what it would need
//! and what the machine has, instead of growing until the kernel kills the process.
//!
//! The estimate covers the parts that grow with the config (not the process's fixed cost: the
//! code, the dataset's cache), generously for the tasks in flight (20-way second order with 5
//! inner steps on one thread: 187 MB measured by `cargo xtask bench`, estimated within
//! 150-600 MB by the test below). It only refuses what cannot fit; it does not promise that
//! what passes will.

use crate::settings::{LearnerSettings, NetShape, Settings};

/// One part of a command's memory: what it is, the key (or option) that sets its size, and
/// its size in bytes (f64: absurd configs overflow integers).
#[derive(Debug, Clone)]
pub struct Need {
    /// What holds the memory.
    pub what: &'static str,
    /// The keys or options that set its size, with their values.
    pub keys: String,
    /// Bytes.
    pub bytes: f64,
}

/// Floats of one image's activations over the net's blocks (each block's conv output is
/// `side^2 x hidden`, the side halving from block to block).
fn activations_per_image(net: &NetShape) -> f64 {
    let mut side = net.image_size as f64;
    let mut floats = 0.0;
    for _ in 0..net.depth.min(64) {
        floats += side * side * net.hidden as f64;
        side = (side / 2.0).floor();
    }
    floats
}

/// Parameters of the net at `n_way` classes.
fn parameters(net: &NetShape, n_way: usize) -> f64 {
    let (h, depth) = (net.hidden as f64, net.depth.min(64) as f64);
    let side = (net.image_size as f64 / 2f64.powf(depth)).floor();
    // conv weights (`channels` input channels, then h) and bias, batch-norm scale and shift,
    // the head.
    9.0 * h * net.channels as f64
        + 9.0 * h * h * (depth - 1.0).max(0.0)
        + 3.0 * h * depth
        + h * side * side * n_way as f64
        + n_way as f64
}

/// The tasks in flight: each keeps its support passes (all inner steps' in second order) and
/// query pass, and a few parameter-sized vectors per step.
fn tasks_in_flight(
    s: &Settings,
    threads: usize,
    tasks: usize,
    n_way: usize,
    n_query: usize,
    kept_steps: usize,
) -> Need {
    let support = (n_way * s.episodes.eval.k_shot) as f64;
    let query = (n_way * n_query) as f64;
    let a = activations_per_image(&s.net);
    let p = parameters(&s.net, n_way);
    let kept = kept_steps.max(1) as f64;
    let per_task = 4.0 * (6.0 * a * (support * kept + query) + (4.0 + 2.0 * kept) * p);
    let mut keys = format!("model.hidden = {}, data.image_size = {}", s.net.hidden, s.net.image_size);
    if kept_steps > 1 {
        keys += &format!(", train.inner_steps = {kept_steps} (second order keeps every step)");
    }
    Need { what: "the tasks in flight", keys, bytes: threads.min(tasks).max(1) as f64 * per_task }
}

/// A batch of `tasks` rendered tasks' pixels (u8, then f32).
fn batch(net: &NetShape, tasks: usize, images_per_task: usize, key: String) -> Need {
    let values = (net.image_size * net.image_size * net.channels) as f64;
    Need { what: "a batch of task images", keys: key, bytes: tasks as f64 * images_per_task as f64 * values * 5.0 }
}

/// A list of `n` episode descriptions of `examples` examples each.
fn episode_list(n: usize, examples: usize, key: String) -> Need {
    Need { what: "the episode list", keys: key, bytes: n as f64 * (64.0 + 16.0 * examples as f64) }
}

/// What `fewshot train` with settings `s` on `threads` threads needs.
pub fn training(s: &Settings, threads: usize) -> Vec<Need> {
    let t = &s.schedule;
    let spec = s.episodes.train;
    let kept = match s.learner {
        LearnerSettings::Maml { maml, .. } if maml.inner.order == fewshot_meta::Order::Second => maml.inner.steps,
        _ => 1,
    };
    let images = spec.n_way * (spec.k_shot + spec.n_query);
    let eval = s.episodes.eval;
    let p = parameters(&s.net, eval.n_way.max(spec.n_way));
    vec![
        Need {
            what: "the parameters, their gradient and Adam's moments",
            keys: format!("model.hidden = {}, model.depth = {}", s.net.hidden, s.net.depth),
            bytes: 4.0 * 8.0 * p,
        },
        tasks_in_flight(s, threads, t.meta_batch_size, spec.n_way, spec.n_query, kept),
        batch(&s.net, t.meta_batch_size, images, format!("train.meta_batch_size = {}", t.meta_batch_size)),
        episode_list(
            t.val_episodes,
            eval.n_way * (eval.k_shot + eval.n_query),
            format!("train.val_episodes = {}", t.val_episodes),
        ),
    ]
}

/// What `fewshot eval` of a model trained with settings `s` needs on episodes of `n_way` classes,
/// `eval_batch` at a time (fresh episodes are drawn as they are evaluated, and a file's are
/// already read: neither list grows here).
pub fn evaluation(s: &Settings, threads: usize, n_way: usize, eval_batch: usize) -> Vec<Need> {
    let spec = s.episodes.eval;
    let images = n_way * (spec.k_shot + spec.n_query);
    vec![
        tasks_in_flight(s, threads, eval_batch, n_way, spec.n_query, 1),
        batch(&s.net, eval_batch, images, format!("{eval_batch} episodes at a time")),
    ]
}

/// This machine's available memory in bytes (Linux: `MemAvailable` of `/proc/meminfo`);
/// `None` where it cannot be read (the check is then skipped).
pub fn available() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Bytes as text: `12.3 GB`.
pub fn human(bytes: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0} B") } else { format!("{v:.1} {}", units[u]) }
}

/// Refuse `needs` when together they exceed `available` bytes, naming the largest part's keys.
pub fn check(needs: &[Need], available: Option<f64>) -> anyhow::Result<()> {
    let Some(available) = available else { return Ok(()) };
    let total: f64 = needs.iter().map(|n| n.bytes).sum();
    if total <= available {
        return Ok(());
    }
    let largest = needs.iter().max_by(|a, b| a.bytes.total_cmp(&b.bytes)).expect("at least one need");
    anyhow::bail!(
        "this would need about {} of memory ({} alone: {}, set by {}), and this machine has {} available; \
         make those values smaller",
        human(total),
        largest.what,
        human(largest.bytes),
        largest.keys,
        human(available)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sets: &[&str]) -> Settings {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Settings::parse("name = \"x\"\n", "test.toml", &sets).unwrap()
    }

    #[test]
    fn the_shipped_shapes_fit_and_absurd_ones_are_named() {
        // 20-way second order, 5 inner steps, one thread: measured 187 MB by `xtask bench`.
        let c = config(&["episodes.n_way=20", "train.inner_steps=5", "train.meta_batch_size=16"]);
        let total: f64 = training(&c, 1).iter().map(|n| n.bytes).sum();
        assert!((150e6..600e6).contains(&total), "{}", human(total));
        assert!(check(&training(&c, 2), Some(2e9)).is_ok());
        for (set, key) in [
            ("model.hidden=100000", "model.hidden = 100000"),
            ("train.meta_batch_size=100000000000", "train.meta_batch_size = 100000000000"),
            ("train.val_episodes=100000000000", "train.val_episodes = 100000000000"),
            ("train.inner_steps=1000000", "train.inner_steps = 1000000"),
        ] {
            let c = config(&[set, "train.method=\"maml\""]);
            let err = check(&training(&c, 2), Some(24e9)).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("24.0 GB available"), "{set}: {err}");
        }
        let c = config(&["model.hidden=100000"]);
        let err = check(&evaluation(&c, 2, 5, 32), Some(24e9)).unwrap_err().to_string();
        assert!(err.contains("model.hidden = 100000"), "{err}");
    }

    #[test]
    fn every_shipped_config_fits_in_4_gb_on_2_threads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = Settings::load(&path, &[]).unwrap();
                let total: f64 = training(&c, 2).iter().map(|n| n.bytes).sum();
                eprintln!("{}: {}", path.display(), human(total));
                assert!(check(&training(&c, 2), Some(4e9)).is_ok(), "{}: {}", path.display(), human(total));
                assert!(check(&evaluation(&c, 2, c.episodes.eval.n_way, 32), Some(4e9)).is_ok());
            }
        }
    }
}
