//! Proto-MAML's head (`HeadInit::Prototypes`) and the prototypical network it makes with no
//! inner step: the initial logits against the closed form, and the meta-gradient, which goes
//! through the prototypes into the feature extractor, against central finite differences and
//! between the two engines, in f64.

use candle_core::{DType, Device, Tensor};
use fewshot_meta::{
    Adaptation, Engine, HeadInit, InnerLoop, Learner, Maml, MamlSettings, MetaParams, Order, TaskBatch,
};
use fewshot_model::{ConvNetConfig, ParamMap, cross_entropy, expand, features, forward, init};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{central_difference, max_abs_diff};

const CONFIG: ConvNetConfig = ConvNetConfig { in_channels: 1, image_size: 8, hidden: 3, depth: 2, n_way: 3 };

/// Two tasks of 3 classes: 2 support images per class (class 2 of the second task has 1, and
/// class 1 has 3), 6 queries.
fn batch(seed: u64) -> TaskBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (t, ns, nq) = (2, 6, 6);
    let mut images = |n: usize| {
        let data: Vec<f64> = (0..t * n * 64).map(|_| rng.random_range(0.0..1.0)).collect();
        Tensor::from_vec(data, (t, n, 1, 8, 8), &Device::Cpu).unwrap()
    };
    let (support_images, query_images) = (images(ns), images(nq));
    TaskBatch {
        support_images,
        support_labels: Tensor::new(&[[0u32, 1, 2, 0, 1, 2], [1, 0, 1, 2, 0, 1]], &Device::Cpu).unwrap(),
        query_images,
        query_labels: Tensor::new(&[[0u32, 1, 2, 0, 1, 2], [2, 2, 0, 0, 1, 1]], &Device::Cpu).unwrap(),
    }
}

fn prototypes(inner: InnerLoop) -> InnerLoop {
    InnerLoop { prototypes: true, ..inner }
}

/// The meta-loss as a plain function of the parameters (candle's forward, the prototypes
/// read by `adapt`).
fn meta_loss(params: &ParamMap, batch: &TaskBatch, inner: &InnerLoop) -> f64 {
    let p = MetaParams::from(params.clone());
    let fast = fewshot_meta::adapt(&CONFIG, &p, &batch.support_images, &batch.support_labels, inner).unwrap();
    let logits = forward(&CONFIG, &fast, &batch.query_images).unwrap();
    cross_entropy(&logits, &batch.query_labels).unwrap().mean_all().unwrap().to_scalar::<f64>().unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn the_prototype_head_scores_queries_by_their_distance_to_the_class_means() {
    let params = init(&CONFIG, 5, DType::F64, &Device::Cpu).unwrap();
    let b = batch(2);
    // Closed form, from the net's features (support and query each a batch of their own, as
    // the engines run them): logit_qk = 2 c_k . f_q - |c_k|^2 = |f_q|^2 - |f_q - c_k|^2.
    let per_task = expand(&params, 2).unwrap();
    let fs = values(&features(&CONFIG, &per_task, &b.support_images).unwrap()); // [2, 6, f]
    let fq = values(&features(&CONFIG, &per_task, &b.query_images).unwrap());
    let f = CONFIG.features();
    let labels: Vec<u32> = b.support_labels.flatten_all().unwrap().to_vec1().unwrap();
    let mut expected = Vec::new();
    for task in 0..2 {
        let mut centres = vec![vec![0f64; f]; 3];
        let mut counts = [0f64; 3];
        for i in 0..6 {
            let y = labels[task * 6 + i] as usize;
            counts[y] += 1.0;
            centres[y].iter_mut().zip(&fs[(task * 6 + i) * f..][..f]).for_each(|(c, v)| *c += v);
        }
        for q in 0..6 {
            let fq = &fq[(task * 6 + q) * f..][..f];
            for (k, c) in centres.iter().enumerate() {
                let dist: f64 = fq.iter().zip(c).map(|(x, c)| (x - c / counts[k]).powi(2)).sum();
                let norm: f64 = fq.iter().map(|x| x * x).sum();
                expected.push(norm - dist);
            }
        }
    }
    let expected = Tensor::from_vec(expected, (2, 6, 3), &Device::Cpu).unwrap();
    let adaptation = Adaptation { prototypes: true, ..Adaptation::all(0.4, 0) };
    let p = MetaParams::from(params.clone());
    for engine in [Engine::Native, Engine::candle()] {
        let logits = engine.adapted_logits(&CONFIG, &p, b.inputs(), &adaptation).unwrap();
        let err = max_abs_diff(&logits, &expected);
        assert!(err < 1e-10, "{engine:?}: prototype logits off the closed form by {err:e}");
    }
    // The stored head plays no part.
    let mut other = params.clone();
    other.insert("head.weight".into(), (params["head.weight"].clone() + 3.0).unwrap());
    let logits = Engine::Native.adapted_logits(&CONFIG, &other.into(), b.inputs(), &adaptation).unwrap();
    assert!(max_abs_diff(&logits, &expected) < 1e-10);
}

#[test]
fn the_meta_gradient_goes_through_the_prototypes() {
    let params = init(&CONFIG, 9, DType::F64, &Device::Cpu).unwrap();
    let b = batch(4);
    let p = MetaParams::from(params.clone());
    // 0 inner steps: a prototypical network; 1 and 2: Proto-MAML.
    for steps in [0, 1, 2] {
        let inner = prototypes(InnerLoop::new(0.5, steps, Order::Second));
        let (native, _) = Engine::Native.meta_gradient(&CONFIG, &p, &b, &inner).unwrap();
        let (candle, _) = Engine::candle().meta_gradient(&CONFIG, &p, &b, &inner).unwrap();
        let (mut checked, mut worst) = (0, 0f64);
        for (name, value) in &params {
            let g = values(&native.net[name]);
            let n = value.elem_count();
            let diff = max_abs_diff(&native.net[name], &candle.net[name]);
            assert!(diff < 1e-9 * (1.0 + values(&candle.net[name]).iter().fold(0f64, |m, v| m.max(v.abs()))));
            if name.starts_with("head.") {
                assert!(g.iter().all(|v| *v == 0.0), "{name}: the stored head is never read");
                continue;
            }
            for index in [0, n / 2, n - 1] {
                if let Some(fd) = central_difference(|q| meta_loss(q, &b, &inner), &params, name, index) {
                    worst = worst.max((fd - g[index]).abs() / fd.abs().max(g[index].abs()).max(1e-7));
                    checked += 1;
                }
            }
        }
        println!("{steps} inner steps: {checked} coordinates checked, worst relative error {worst:.2e}");
        assert!(checked >= 10, "only {checked} coordinates checked");
        assert!(worst < 1e-6, "{steps} steps: the meta-gradient is off finite differences by {worst:.2e}");
    }
    // Without the path through the prototypes the body's gradient is another one: it matters.
    let inner = prototypes(InnerLoop::new(0.5, 1, Order::Second));
    let (with, _) = Engine::Native.meta_gradient(&CONFIG, &p, &b, &inner).unwrap();
    let proto_head = {
        let f = |n| Tensor::zeros(n, DType::F64, &Device::Cpu).unwrap();
        let mut q = params.clone();
        q.insert("head.weight".into(), f(CONFIG.n_way * CONFIG.features()).reshape((3, CONFIG.features())).unwrap());
        q.insert("head.bias".into(), f(3));
        q
    };
    let (plain, _) = Engine::Native
        .meta_gradient(&CONFIG, &proto_head.into(), &b, &InnerLoop { prototypes: false, ..inner })
        .unwrap();
    assert!(max_abs_diff(&with.net["block0.conv.weight"], &plain.net["block0.conv.weight"]) > 1e-6);
}

#[test]
fn first_order_proto_maml_agrees_between_engines_and_a_learner_trains_it() {
    let params = init(&CONFIG, 11, DType::F64, &Device::Cpu).unwrap();
    let b = batch(6);
    let p = MetaParams::from(params);
    let inner = prototypes(InnerLoop::new(0.5, 2, Order::First));
    let (native, s1) = Engine::Native.meta_gradient(&CONFIG, &p, &b, &inner).unwrap();
    let (candle, s2) = Engine::candle().meta_gradient(&CONFIG, &p, &b, &inner).unwrap();
    assert!((s1.loss - s2.loss).abs() < 1e-6);
    for (name, g) in &native.net {
        assert!(max_abs_diff(g, &candle.net[name]) < 1e-9, "{name}");
    }
    // Through a learner: `HeadInit::Prototypes` sets the inner loop's prototypes itself.
    let settings = MamlSettings {
        head_init: HeadInit::Prototypes,
        ..MamlSettings::new(InnerLoop::new(0.5, 1, Order::Second), 1e-2)
    };
    let mut maml = Maml::new(CONFIG, &p, settings).unwrap();
    let (g, _) = maml.meta_gradient(&b).unwrap();
    let (want, _) = Engine::Native
        .meta_gradient(&CONFIG, &maml.params(), &b, &prototypes(InnerLoop::new(0.5, 1, Order::Second)))
        .unwrap();
    assert!(max_abs_diff(&g.net["block1.conv.weight"], &want.net["block1.conv.weight"]) < 1e-12);
    let before = maml.step(&b).unwrap().loss;
    for _ in 0..20 {
        maml.step(&b).unwrap();
    }
    let after = maml.step(&b).unwrap().loss;
    assert!(after < before, "the query loss falls on one batch: {before} -> {after}");
}
