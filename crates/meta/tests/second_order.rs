//! The meta-gradient against central finite differences, in f64 on a small net.
//!
//! Second order must match finite differences of the true meta-loss (query loss after
//! adaptation, as a function of the initial parameters); first order must equal the plain
//! query-loss gradient at the fast weights, and must *not* match finite differences. Together
//! these show that second order is real and not first order under another name.

use candle_core::{DType, Device, Tensor, Var};
use fewshot_meta::{
    Engine, HeadInit, InnerLoop, Learner, Maml, MamlSettings, MetaParams, MultiStepLoss, Order, StepStats, TaskBatch,
    TaskInputs, adapt,
};
use fewshot_model::{ConvNetConfig, ParamMap, cross_entropy, forward, init};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::{central_difference, max_abs_diff, perturbed};

const CONFIG: ConvNetConfig = ConvNetConfig { in_channels: 1, image_size: 8, hidden: 3, depth: 2, n_way: 3 };

/// The groups of a flat parameter map (the names checkpoints store: the finite differences
/// below perturb rates and sets by those names).
fn groups(flat: &ParamMap) -> MetaParams {
    MetaParams::from_map(&CONFIG, flat).unwrap()
}

/// `engine`'s meta-gradient at a flat parameter map, flat.
fn meta_gradient(
    engine: Engine,
    params: &ParamMap,
    batch: &TaskBatch,
    inner: &InnerLoop,
) -> fewshot_meta::Result<(ParamMap, StepStats)> {
    engine.meta_gradient(&CONFIG, &groups(params), batch, inner).map(|(g, s)| (g.to_map(), s))
}

/// `engine`'s adapted logits at a flat parameter map.
fn adapted_logits(
    engine: Engine,
    params: &ParamMap,
    tasks: TaskInputs<'_>,
    adaptation: &fewshot_meta::Adaptation,
) -> fewshot_meta::Result<Tensor> {
    engine.adapted_logits(&CONFIG, &groups(params), tasks, adaptation)
}

fn batch(seed: u64) -> TaskBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (t, ns, nq) = (2, 3, 6);
    let mut images = |n: usize| {
        let data: Vec<f64> = (0..t * n * 64).map(|_| rng.random_range(0.0..1.0)).collect();
        Tensor::from_vec(data, (t, n, 1, 8, 8), &Device::Cpu).unwrap()
    };
    let support_images = images(ns);
    let query_images = images(nq);
    TaskBatch {
        support_images,
        support_labels: Tensor::new(&[[0u32, 1, 2], [2, 0, 1]], &Device::Cpu).unwrap(),
        query_images,
        query_labels: Tensor::new(&[[0u32, 1, 2, 0, 1, 2], [2, 2, 0, 0, 1, 1]], &Device::Cpu).unwrap(),
    }
}

/// The meta-loss as a plain function of the initial parameters: the mean query loss after
/// the inner loop or, with a multi-step loss, the weighted sum of the query losses after each
/// inner step.
fn meta_loss(params: &ParamMap, batch: &TaskBatch, inner: &InnerLoop) -> f64 {
    let query_loss = |steps: usize| {
        let inner = InnerLoop { steps, ..*inner };
        let fast = adapt(&CONFIG, &groups(params), &batch.support_images, &batch.support_labels, &inner).unwrap();
        let logits = forward(&CONFIG, &fast, &batch.query_images).unwrap();
        cross_entropy(&logits, &batch.query_labels).unwrap().mean_all().unwrap().to_scalar::<f64>().unwrap()
    };
    if inner.multi_step.is_none() {
        return query_loss(inner.steps);
    }
    inner.step_weights().iter().enumerate().map(|(i, w)| w * query_loss(i + 1)).sum()
}

struct Comparison {
    checked: usize,
    skipped: usize,
    worst_rel: f64,
}

/// `|fd - got|` relative to the larger of the two (and 1e-7).
fn relative_error(fd: f64, got: f64) -> f64 {
    (fd - got).abs() / fd.abs().max(got.abs()).max(1e-7)
}

/// Compare `grads` with central differences of the meta-loss at coordinates spread over
/// every parameter.
fn compare_with_fd(params: &ParamMap, grads: &ParamMap, batch: &TaskBatch, inner: &InnerLoop) -> Comparison {
    compare_loss_with_fd(|p| meta_loss(p, batch, inner), params, grads)
}

/// Compare `grads` with central differences of `loss` at coordinates spread over every
/// parameter.
fn compare_loss_with_fd(loss: impl Fn(&ParamMap) -> f64, params: &ParamMap, grads: &ParamMap) -> Comparison {
    let mut c = Comparison { checked: 0, skipped: 0, worst_rel: 0.0 };
    for (name, p) in params {
        let n = p.elem_count();
        let g = grads[name].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for index in [0, n / 2, n - 1, (n * 7) / 9] {
            match central_difference(&loss, params, name, index) {
                None => c.skipped += 1,
                Some(fd) => {
                    c.worst_rel = c.worst_rel.max(relative_error(fd, g[index]));
                    c.checked += 1;
                }
            }
        }
    }
    c
}

#[test]
fn second_order_matches_finite_differences_after_one_and_two_steps() {
    let params = init(&CONFIG, 3, DType::F64, &Device::Cpu).unwrap();
    let batch = batch(1);
    // Both engines: candle's autograd (reference) and the native Hessian-vector-product path.
    for engine in ["candle", "native"] {
        let gradient = |inner: &InnerLoop| match engine {
            "candle" => meta_gradient(Engine::candle(), &params, &batch, inner).unwrap().0,
            _ => meta_gradient(Engine::Native, &params, &batch, inner).unwrap().0,
        };
        for steps in [1, 2] {
            let inner = InnerLoop::new(0.5, steps, Order::Second);
            let c = compare_with_fd(&params, &gradient(&inner), &batch, &inner);
            println!(
                "{engine}, {steps} step(s): {} coordinates checked, {} skipped at kinks, worst relative error {:.2e}",
                c.checked, c.skipped, c.worst_rel
            );
            assert!(c.checked >= 10, "only {} coordinates checked", c.checked);
            assert!(c.worst_rel < 1e-6, "{engine}: second order off by {:.2e} after {steps} steps", c.worst_rel);

            // First order is a different, cheaper gradient: it must fail the same check.
            let first = InnerLoop { order: Order::First, ..inner };
            let c = compare_with_fd(&params, &gradient(&first), &batch, &inner);
            assert!(
                c.worst_rel > 1e-3,
                "{engine}: first order unexpectedly matches the exact meta-gradient ({:.2e})",
                c.worst_rel
            );
        }
    }
}

#[test]
fn multi_step_loss_matches_finite_differences() {
    let params = init(&CONFIG, 11, DType::F64, &Device::Cpu).unwrap();
    let batch = batch(4);
    for steps in [2, 3] {
        for progress in [0.0, 0.6] {
            let multi_step = Some(MultiStepLoss { progress });
            let inner = InnerLoop { multi_step, ..InnerLoop::new(0.5, steps, Order::Second) };
            let (grads, _) = meta_gradient(Engine::Native, &params, &batch, &inner).unwrap();
            let c = compare_with_fd(&params, &grads, &batch, &inner);
            println!(
                "multi-step loss, {steps} steps, progress {progress}: {} checked, {} skipped, worst {:.2e}",
                c.checked, c.skipped, c.worst_rel
            );
            assert!(c.checked >= 10, "only {} coordinates checked", c.checked);
            assert!(c.worst_rel < 1e-6, "multi-step loss off by {:.2e} ({steps} steps)", c.worst_rel);
            // The option is not ignored: the last step's loss alone has another gradient.
            let last_only = InnerLoop { multi_step: None, ..inner };
            let c = compare_with_fd(
                &params,
                &meta_gradient(Engine::Native, &params, &batch, &last_only).unwrap().0,
                &batch,
                &inner,
            );
            assert!(c.worst_rel > 1e-3, "the multi-step loss changed nothing ({:.2e})", c.worst_rel);
        }
    }
    // First order: the weighted sum of the first-order gradients after 1, 2, 3 steps.
    let inner = InnerLoop { multi_step: Some(MultiStepLoss { progress: 0.3 }), ..InnerLoop::new(0.5, 3, Order::First) };
    let (grads, _) = meta_gradient(Engine::Native, &params, &batch, &inner).unwrap();
    let weights = inner.step_weights();
    for (name, g) in &grads {
        let mut want = g.zeros_like().unwrap();
        for (i, w) in weights.iter().enumerate() {
            let fo = InnerLoop::new(0.5, i + 1, Order::First);
            let (gi, _) = meta_gradient(Engine::candle(), &params, &batch, &fo).unwrap();
            want = (want + (&gi[name] * *w).unwrap()).unwrap();
        }
        let diff = max_abs_diff(g, &want);
        assert!(diff < 1e-12, "{name}: first-order multi-step gradient differs by {diff:e}");
    }
}

#[test]
fn shared_and_zero_heads_have_the_gradients_of_their_parameters() {
    let params = init(&CONFIG, 13, DType::F64, &Device::Cpu).unwrap();
    let batch = batch(5);
    let inner = InnerLoop::new(0.5, 2, Order::Second);
    for head in [HeadInit::Shared, HeadInit::Zero] {
        let maml =
            Maml::new(CONFIG, &groups(&params), MamlSettings { head_init: head, ..MamlSettings::new(inner, 1e-3) })
                .unwrap();
        let stored = maml.params().to_map();
        let (grads, _) = maml.meta_gradient(&batch).unwrap();
        let grads = grads.to_map();
        // The meta-loss as a function of the stored parameters: each task starts from the head
        // as `head` builds it.
        let loss = |p: &ParamMap| meta_loss(&head.task_params(p, CONFIG.n_way).unwrap(), &batch, &inner);
        let g = |name: &str| grads[name].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let features = CONFIG.features();
        // Row 0 of the head (what a shared head reads), the bias and a conv weight.
        // Conv and batch-norm coordinates: the meta-gradient is exact with either head.
        let coordinates = [
            ("block0.conv.weight", 5),
            ("block0.conv.weight", 10),
            ("block0.conv.weight", 20),
            ("block1.conv.weight", 7),
            ("block1.bn.weight", 1),
            ("block0.bn.bias", 2),
        ];
        let mut checked = 0;
        for (name, index) in coordinates {
            let Some(fd) = central_difference(loss, &stored, name, index) else {
                continue; // a kink is near
            };
            let got = g(name)[index];
            assert!(
                relative_error(fd, got) < 1e-6,
                "{head:?}: {name}[{index}] gradient {got} vs finite differences {fd}"
            );
            checked += 1;
        }
        assert!(checked >= 4, "{head:?}: only {checked} coordinates checked");
        // The head's own parameters: softmax cross-entropy is invariant to a shift shared by
        // every class, and a shared row shifts every class alike, so neither head's stored
        // parameters move the meta-loss: finite differences and gradients are zero.
        for (name, index) in [("head.weight", 0), ("head.weight", features / 2), ("head.bias", 0)] {
            let fd =
                (loss(&perturbed(&stored, name, index, 1e-3)) - loss(&perturbed(&stored, name, index, -1e-3))) / 2e-3;
            assert!(fd.abs() < 1e-9, "{head:?}: {name}[{index}] moves the meta-loss ({fd:e})");
        }
        let w = g("head.weight");
        assert!(w.iter().chain(&g("head.bias")).all(|v| v.abs() < 1e-9), "{head:?}: head gradient not zero");
        if head == HeadInit::Shared {
            // Every row holds the shared row's gradient, so Adam keeps the rows equal.
            assert!(w.chunks(features).all(|row| row == &w[..features]));
        }
    }
}

#[test]
fn first_order_equals_query_gradient_at_fast_weights() {
    let params = init(&CONFIG, 5, DType::F64, &Device::Cpu).unwrap();
    let batch = batch(2);
    for steps in [1, 3] {
        let inner = InnerLoop::new(0.4, steps, Order::First);
        let (fo, _) = meta_gradient(Engine::candle(), &params, &batch, &inner).unwrap();
        // Fast weights as fresh leaves; the query-loss gradient there, summed over tasks
        // (every task starts from the same initial parameters).
        let fast = adapt(&CONFIG, &groups(&params), &batch.support_images, &batch.support_labels, &inner).unwrap();
        let fast_vars = fewshot_model::ParamVars::new(&fast).unwrap();
        let fast_map = fast_vars.tensors();
        let logits = forward(&CONFIG, &fast_map, &batch.query_images).unwrap();
        let loss = cross_entropy(&logits, &batch.query_labels).unwrap().mean_all().unwrap();
        let grads = fewshot_meta::backward(&loss, fewshot_meta::GradMode::Detach).unwrap();
        for (name, v) in fast_vars.iter() {
            // No gradient reaches a parameter the loss ignores (conv biases before batch norm).
            let want = match grads.get(v.as_tensor()) {
                Some(g) => g.sum(0).unwrap(),
                None => fo[name].zeros_like().unwrap(),
            };
            let diff = max_abs_diff(&fo[name], &want);
            assert!(diff < 1e-12, "{name}: first-order meta-gradient differs by {diff}");
        }
    }
}

#[test]
fn results_do_not_depend_on_the_callers_environment() {
    let params = init(&CONFIG, 7, DType::F64, &Device::Cpu).unwrap();
    let batch = batch(3);
    let inner = InnerLoop::new(0.4, 1, Order::Second);
    let run = |env: Option<&str>| {
        let (params, batch) = (params.clone(), batch.clone());
        let env = env.map(str::to_owned);
        std::thread::spawn(move || {
            // A caller thread that latched candle's switch either way before calling us.
            {
                let _env = fewshot_meta::environment_lock();
                // SAFETY: test-only, under the lock the library's own latching holds; the
                // variable is candle's switch, read by no other code here.
                unsafe {
                    match &env {
                        Some(v) => std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", v),
                        None => std::env::remove_var("CANDLE_GRAD_DO_NOT_DETACH"),
                    }
                }
                let x = Var::new(1f64, &Device::Cpu).unwrap();
                x.as_tensor().sqr().unwrap().backward().unwrap();
            }
            let (g, _) = meta_gradient(Engine::candle(), &params, &batch, &inner).unwrap();
            g["block0.conv.weight"].flatten_all().unwrap().to_vec1::<f64>().unwrap()
        })
        .join()
        .unwrap()
    };
    assert_eq!(run(Some("1")), run(None));
}

#[test]
fn chunking_tasks_does_not_change_the_meta_gradient() {
    let params = init(&CONFIG, 9, DType::F64, &Device::Cpu).unwrap();
    let batch = batch(4);
    let inner = InnerLoop::new(0.4, 2, Order::Second);
    let (whole, s1) = meta_gradient(Engine::Candle { task_chunk: 2 }, &params, &batch, &inner).unwrap();
    let (chunked, s2) = meta_gradient(Engine::candle(), &params, &batch, &inner).unwrap();
    assert!((s1.loss - s2.loss).abs() < 1e-6 && s1.accuracy == s2.accuracy);
    for (name, g) in &whole {
        let diff = max_abs_diff(g, &chunked[name]);
        assert!(diff < 1e-12, "{name}: {diff}");
    }
    assert!(
        meta_gradient(Engine::Candle { task_chunk: 0 }, &params, &batch, &inner)
            .unwrap_err()
            .to_string()
            .contains("task_chunk")
    );
}

/// `params` with learned rates for `steps` steps, drawn in [0.2, 0.7) so that every tensor and
/// step has its own.
fn with_rates(params: &ParamMap, steps: usize, seed: u64) -> ParamMap {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = params.clone();
    for (name, r) in fewshot_meta::init_rates(&CONFIG, steps, 0.5, DType::F64, &Device::Cpu).unwrap() {
        let v: Vec<f64> = (0..r.elem_count()).map(|_| rng.random_range(0.2..0.7)).collect();
        out.insert(fewshot_meta::rate_name(&name), Tensor::from_vec(v, steps, &Device::Cpu).unwrap());
    }
    out
}

#[test]
fn learned_inner_rates_have_exact_meta_gradients() {
    let params = init(&CONFIG, 17, DType::F64, &Device::Cpu).unwrap();
    let batch = batch(6);
    for steps in [1, 2] {
        let p = with_rates(&params, steps, steps as u64);
        for engine in [Engine::candle(), Engine::Native] {
            for multi_step in [None, Some(MultiStepLoss { progress: 0.4 })] {
                if multi_step.is_some() && (steps == 1 || engine != Engine::Native) {
                    continue; // the multi-step loss is the native engine's
                }
                let inner = InnerLoop { multi_step, ..InnerLoop::new(0.5, steps, Order::Second) };
                let (grads, _) = meta_gradient(engine, &p, &batch, &inner).unwrap();
                assert_eq!(grads.len(), p.len(), "a gradient for every parameter and rate");
                let c = compare_with_fd(&p, &grads, &batch, &inner);
                println!(
                    "{engine:?}, learned rates, {steps} step(s), {multi_step:?}: {} checked, {} skipped, worst {:.2e}",
                    c.checked, c.skipped, c.worst_rel
                );
                assert!(c.checked >= 20, "only {} coordinates checked", c.checked);
                assert!(c.worst_rel < 1e-6, "{engine:?}: learned rates off by {:.2e} ({steps} steps)", c.worst_rel);
                // The rates are used: their gradients are not all zero (conv biases' are).
                let rate_grad = grads["inner_lr.block0.conv.weight"].abs().unwrap().sum_all().unwrap();
                assert!(rate_grad.to_scalar::<f64>().unwrap() > 1e-6);
            }
        }
        // First order: the two engines agree, rates included.
        let fo = InnerLoop::new(0.5, steps, Order::First);
        let (a, _) = meta_gradient(Engine::candle(), &p, &batch, &fo).unwrap();
        let (b, _) = meta_gradient(Engine::Native, &p, &batch, &fo).unwrap();
        for (name, g) in &a {
            let diff = max_abs_diff(g, &b[name]);
            assert!(diff < 1e-12, "first order, {name}: engines differ by {diff:e}");
        }
    }
    // Rates all equal to inner_lr: the same net gradient as the plain inner loop.
    let inner = InnerLoop::new(0.5, 2, Order::Second);
    let mut uniform = params.clone();
    let rates = fewshot_meta::init_rates(&CONFIG, 2, 0.5, DType::F64, &Device::Cpu).unwrap();
    uniform.extend(rates.into_iter().map(|(name, r)| (fewshot_meta::rate_name(&name), r)));
    let (plain, _) = meta_gradient(Engine::Native, &params, &batch, &inner).unwrap();
    let (learned, _) = meta_gradient(Engine::Native, &uniform, &batch, &inner).unwrap();
    for (name, g) in &plain {
        assert!(max_abs_diff(g, &learned[name]) < 1e-12, "{name}");
    }
}

#[test]
fn evaluation_beyond_the_learned_steps_takes_the_last_rate() {
    let params = with_rates(&init(&CONFIG, 19, DType::F64, &Device::Cpu).unwrap(), 2, 3);
    let batch = batch(7);
    let adaptation = fewshot_meta::Adaptation::all(0.5, 4);
    let native = adapted_logits(Engine::Native, &params, batch.inputs(), &adaptation).unwrap();
    let candle = adapted_logits(Engine::candle(), &params, batch.inputs(), &adaptation).unwrap();
    assert!(max_abs_diff(&native, &candle) < 1e-10);
    // Spelled out: rates of 4 steps whose last two repeat the second give the same logits.
    let mut spelled = params.clone();
    for (name, r) in &params {
        if name.starts_with(fewshot_meta::RATE_PREFIX) {
            let v = r.to_vec1::<f64>().unwrap();
            spelled.insert(name.clone(), Tensor::new(&[v[0], v[1], v[1], v[1]], &Device::Cpu).unwrap());
        }
    }
    let again = adapted_logits(Engine::Native, &spelled, batch.inputs(), &adaptation).unwrap();
    assert!(max_abs_diff(&native, &again) < 1e-14);
    // And they matter: the plain inner_lr labels differently.
    let net = groups(&params).net;
    let plain = adapted_logits(Engine::Native, &net, batch.inputs(), &adaptation).unwrap();
    assert!(max_abs_diff(&native, &plain) > 1e-6);
}

/// The meta-loss through the native engine's forward passes only (adapted logits, then
/// cross-entropy): independent of its backward pass and Hessian-vector products, and the one
/// reference for options the candle path does not have (per-step batch norm).
fn native_meta_loss(params: &ParamMap, batch: &TaskBatch, inner: &InnerLoop) -> f64 {
    let query_loss = |steps: usize| {
        let adaptation = fewshot_meta::Adaptation::all(inner.inner_lr, steps);
        let logits = adapted_logits(Engine::Native, params, batch.inputs(), &adaptation).unwrap();
        cross_entropy(&logits, &batch.query_labels).unwrap().mean_all().unwrap().to_scalar::<f64>().unwrap()
    };
    inner.step_weights().iter().enumerate().filter(|(_, w)| **w != 0.0).map(|(i, w)| w * query_loss(i + 1)).sum()
}

/// `params` with per-step batch-norm sets for `steps` steps, every set different.
fn with_bn_steps(params: &ParamMap, steps: usize, seed: u64) -> ParamMap {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = params.clone();
    for (name, t) in fewshot_meta::init_bn_steps(&CONFIG, params, steps).unwrap() {
        let gain = name.ends_with("weight");
        let v: Vec<f64> = (0..t.elem_count())
            .map(|_| if gain { rng.random_range(0.5..1.5) } else { rng.random_range(-0.3..0.3) })
            .collect();
        out.insert(fewshot_meta::bn_step_name(&name), Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap());
    }
    out
}

#[test]
fn per_step_batch_norm_has_exact_meta_gradients() {
    let params = init(&CONFIG, 23, DType::F64, &Device::Cpu).unwrap();
    let batch = batch(8);
    // The forward-only reference agrees with candle's meta-loss where both apply.
    let plain = InnerLoop::new(0.5, 2, Order::Second);
    assert!((native_meta_loss(&params, &batch, &plain) - meta_loss(&params, &batch, &plain)).abs() < 1e-12);
    let cases = [
        (1, None, false),
        (2, None, false),
        (3, Some(MultiStepLoss { progress: 0.3 }), false),
        (2, Some(MultiStepLoss { progress: 0.5 }), true), // with learned rates too
    ];
    for (steps, multi_step, rates) in cases {
        let mut p = with_bn_steps(&params, steps, steps as u64 + 40);
        if rates {
            p = with_rates(&p, steps, 9);
        }
        let inner = InnerLoop { multi_step, ..InnerLoop::new(0.5, steps, Order::Second) };
        let (grads, _) = meta_gradient(Engine::Native, &p, &batch, &inner).unwrap();
        assert_eq!(grads.len(), p.len(), "a gradient for every parameter and set");
        let c = compare_loss_with_fd(|q| native_meta_loss(q, &batch, &inner), &p, &grads);
        println!(
            "per-step batch norm, {steps} step(s), {multi_step:?}, rates {rates}: {} checked, {} skipped, worst {:.2e}",
            c.checked, c.skipped, c.worst_rel
        );
        assert!(c.checked >= 20, "only {} coordinates checked", c.checked);
        assert!(c.worst_rel < 1e-6, "per-step batch norm off by {:.2e} ({steps} steps)", c.worst_rel);
        // The sets replace the net's own batch-norm parameters, which get no gradient.
        let unused = grads["block0.bn.weight"].abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert_eq!(unused, 0.0);
        let used = grads["bn_step.block1.bn.bias"].abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(used > 1e-6);
    }
    // The candle reference has no per-step batch norm: it says so.
    let p = with_bn_steps(&params, 1, 1);
    let e = meta_gradient(Engine::candle(), &p, &batch, &plain).unwrap_err().to_string();
    assert!(e.contains("per-step batch"), "{e}");
}
