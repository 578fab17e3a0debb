//! Real-data learning checks on small budgets, 5-way 1-shot Omniglot (chance: 0.20):
//! - first-order MAML must reach at least 0.60 validation accuracy and gain at least 0.08 over
//!   its starting point (a random net adapted on the support set already beats chance, so the
//!   gain is what shows meta-learning);
//! - second-order MAML with the course's recipe (inner lr 0.4, meta-batch 32, 1 inner step in
//!   training, 3 in validation) must reach at least 0.85 and gain at least 0.15 (measured: 0.914 after 200 meta-steps,
//!   49 s on 2 cores).
//!
//! The two run one after the other (a lock), so each has the machine's cores to itself.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use fewshot_e2e::{omniglot, source_or_skip};
use fewshot_meta::{Accuracy, InnerLoop, Maml, Order, evaluate_batch};
use fewshot_model::{ConvNetConfig, init};
use fewshot_tasks::{DrawingSplit, EpisodeSet, EpisodeSpec, Protocol, Sampler};
use rand::SeedableRng;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Check {
    name: &'static str,
    order: Order,
    inner_lr: f64,
    meta_batch: usize,
    /// Training stops at this budget, or earlier once validation clears `stop_at`.
    budget: Duration,
    stop_at: f64,
    required: f64,
    required_gain: f64,
}

const STEPS_PER_CHECK: usize = 40;

#[test]
fn first_order_maml_learns_5_way_1_shot() {
    learns(Check {
        name: "first-order MAML",
        order: Order::First,
        // Below the course's 0.4: from a random start one step of 0.4 overshoots (query loss
        // ~3.9 against ln 5 = 1.6 at chance), which costs first-order MAML its first minutes.
        inner_lr: 0.1,
        // Smaller than the course's 32: on a short budget more Adam steps beat bigger batches.
        meta_batch: 8,
        budget: Duration::from_secs(150),
        stop_at: 0.75,
        required: 0.60,
        required_gain: 0.08,
    });
}

#[test]
fn second_order_maml_learns_5_way_1_shot_with_the_course_recipe() {
    learns(Check {
        name: "second-order MAML (course recipe)",
        order: Order::Second,
        inner_lr: 0.4,
        meta_batch: 32,
        budget: Duration::from_secs(240),
        stop_at: 0.90,
        required: 0.85,
        required_gain: 0.15,
    });
}

fn learns(check: Check) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(source) = source_or_skip(check.name) else {
        return;
    };
    let data = omniglot(&source);
    let splits = Protocol::Course.splits(0);
    let spec = EpisodeSpec { n_way: 5, k_shot: 1, n_query: 1, drawing_split: DrawingSplit::Any };
    let sampler = Sampler::new(splits.train, spec).unwrap();
    let validation = EpisodeSet::generate(splits.validation, spec, 200, 1, "course validation").unwrap();
    let val_batches: Vec<_> =
        validation.episodes.chunks(50).map(|c| data.batch(c, DType::F32, &Device::Cpu).unwrap()).collect();

    let config = ConvNetConfig::omniglot(5);
    let params = init(&config, 0, DType::F32, &Device::Cpu).unwrap();
    let inner = InnerLoop { inner_lr: check.inner_lr, steps: 1, order: check.order };
    let mut maml = Maml::new(config, &params, inner, 1e-3).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);

    let validate = |maml: &Maml| {
        let per_task: Vec<f32> = val_batches
            .iter()
            .flat_map(|b| evaluate_batch(&config, &maml.params(), b, check.inner_lr, 3).unwrap())
            .collect();
        Accuracy::from_episodes(&per_task)
    };
    let start = Instant::now();
    let initial = validate(&maml);
    println!("{}: step 0: validation {initial}", check.name);
    let mut best = initial;
    let mut step = 0;
    while start.elapsed() < check.budget && best.mean < check.stop_at {
        for _ in 0..STEPS_PER_CHECK {
            let episodes: Vec<_> = (0..check.meta_batch).map(|_| sampler.sample(&mut rng)).collect();
            let batch = data.batch(&episodes, DType::F32, &Device::Cpu).unwrap();
            let stats = maml.meta_step(&batch).unwrap();
            step += 1;
            if step % STEPS_PER_CHECK == 0 {
                print!("step {step}: train loss {:.3} acc {:.3}; ", stats.loss, stats.accuracy);
            }
        }
        let acc = validate(&maml);
        println!("validation {acc} at {:.0} s", start.elapsed().as_secs_f64());
        if acc.mean > best.mean {
            best = acc;
        }
    }
    fewshot_e2e::report(&format!(
        "{}, 5-way 1-shot: best validation accuracy {best} (from {:.3} at step 0) after {step} meta-steps ({} tasks) in {:.0} s",
        check.name,
        initial.mean,
        step * check.meta_batch,
        start.elapsed().as_secs_f64()
    ));
    assert!(best.mean >= check.required, "{}: validation accuracy {:.3} < {}", check.name, best.mean, check.required);
    assert!(
        best.mean - initial.mean >= check.required_gain,
        "{}: validation accuracy rose only from {:.3} to {:.3}",
        check.name,
        initial.mean,
        best.mean
    );
}
