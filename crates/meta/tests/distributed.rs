//! Splitting a batch's tasks over ranks ([`fewshot_meta::distributed`]) changes nothing in
//! what is computed: the same meta-steps, bit for bit, and the same adapted logits, whatever
//! the number of ranks (ranks here are threads joined by channels, [`LocalGroup`]; the MPI
//! group of the `fewshot` binary is tested in the CLI's `mpi` tests).

use candle_core::{DType, Device, Tensor};
use fewshot_meta::distributed::{self, on_local_ranks};
use fewshot_meta::{
    Adaptation, Annealing, Engine, InnerLoop, Learner, Maml, MamlSettings, MetaParams, Order, TaskBatch,
};
use fewshot_model::{ConvNetConfig, init};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CONFIG: ConvNetConfig = ConvNetConfig { in_channels: 1, image_size: 12, hidden: 4, depth: 2, n_way: 3 };

fn batch(t: usize, seed: u64) -> TaskBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = CONFIG.image_size;
    let n = CONFIG.n_way;
    let mut images = |k: usize| {
        let data: Vec<f32> = (0..t * k * s * s).map(|_| rng.random_range(0.0..1.0)).collect();
        Tensor::from_vec(data, (t, k, 1, s, s), &Device::Cpu).unwrap()
    };
    let (support_images, query_images) = (images(n), images(2 * n));
    let labels = |k: usize| {
        let data: Vec<u32> = (0..t * k).map(|i| (i % n) as u32).collect();
        Tensor::from_vec(data, (t, k), &Device::Cpu).unwrap()
    };
    TaskBatch { support_images, support_labels: labels(n), query_images, query_labels: labels(2 * n) }
}

/// Every parameter's bits, in name order.
fn bits(p: &MetaParams) -> Vec<(String, Vec<u32>)> {
    p.to_map()
        .into_iter()
        .map(|(name, t)| {
            (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

/// Three MAML++ meta-steps in f32 (learned rates, per-step batch norm, multi-step loss, second
/// order) on 7 tasks a batch; the parameters' bits and each step's loss.
fn train_three_steps() -> (Vec<(String, Vec<u32>)>, Vec<u32>) {
    let steps = 2;
    let mut params = MetaParams::from(init(&CONFIG, 5, DType::F32, &Device::Cpu).unwrap());
    params.rates = Some(fewshot_meta::init_rates(&CONFIG, steps, 0.4, DType::F32, &Device::Cpu).unwrap());
    params.bn_steps = Some(fewshot_meta::init_bn_steps(&CONFIG, &params.net, steps).unwrap());
    let settings = MamlSettings {
        annealing: Annealing { first_order_steps: 1, multi_step_steps: Some(10) },
        ..MamlSettings::new(InnerLoop::new(0.4, steps, Order::Second), 1e-2)
    };
    let mut maml = Maml::new(CONFIG, &params, settings).unwrap();
    let losses = (0..3).map(|s| maml.meta_step(&batch(7, 100 + s)).unwrap().loss.to_bits()).collect();
    (bits(&maml.params()), losses)
}

#[test]
fn meta_steps_are_the_same_bits_on_any_number_of_ranks() {
    let alone = train_three_steps();
    // 8 ranks for 7 tasks: the last rank has none and still takes part.
    for n in [2, 3, 8] {
        for (rank, got) in on_local_ranks(n, train_three_steps).into_iter().enumerate() {
            assert!(got == alone, "{n} ranks, rank {rank}: the parameters or losses differ from one process's");
        }
    }
}

#[test]
fn adapted_logits_are_gathered_in_task_order() {
    let logits = || {
        let params = MetaParams::from(init(&CONFIG, 9, DType::F32, &Device::Cpu).unwrap());
        let b = batch(5, 3);
        let adaptation = Adaptation::all(0.3, 2);
        let l = Engine::Native.adapted_logits(&CONFIG, &params, b.inputs(), &adaptation).unwrap();
        l.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    let alone = logits();
    assert_eq!(alone.len(), 5 * 6 * 3);
    for n in [2, 4, 6] {
        for got in on_local_ranks(n, logits) {
            assert_eq!(got, alone, "{n} ranks");
        }
    }
}

#[test]
fn the_candle_engine_is_refused_under_a_group_and_ranks_agree_on_a_stop() {
    let results = on_local_ranks(2, || {
        let params = MetaParams::from(init(&CONFIG, 9, DType::F32, &Device::Cpu).unwrap());
        let inner = InnerLoop::new(0.4, 1, Order::First);
        let err = Engine::candle().meta_gradient(&CONFIG, &params, &batch(2, 1), &inner).unwrap_err().to_string();
        let (rank, _) = distributed::rank_and_size();
        (err, distributed::any(rank == 1).unwrap())
    });
    for (err, stop) in results {
        assert!(err.contains("candle") && err.contains("native engine") && err.contains("2 ranks"), "{err}");
        assert!(stop);
    }
}
