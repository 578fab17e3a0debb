//! The functional net against independent computations: candle's own conv2d, naive loops,
//! closed forms.

use candle_core::{D, DType, Device, Tensor};
use fewshot_model::*;

fn seeded(shape: &[usize], seed: u64) -> Tensor {
    // A simple deterministic pattern, no RNG dependency needed.
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0) - 1.0).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn forward_shapes() {
    for (config, t, b) in [
        (ConvNetConfig::omniglot(5), 3, 10),
        (ConvNetConfig::omniglot(20), 1, 40),
        (ConvNetConfig { in_channels: 3, image_size: 9, hidden: 4, depth: 2, n_way: 3 }, 2, 4),
    ] {
        let params = init(&config, 1, DType::F32, &Device::Cpu).unwrap();
        let x =
            Tensor::zeros((t, b, config.in_channels, config.image_size, config.image_size), DType::F32, &Device::Cpu)
                .unwrap();
        let logits = forward(&config, &expand(&params, t).unwrap(), &x).unwrap();
        assert_eq!(logits.dims(), &[t, b, config.n_way]);
    }
    assert_eq!(ConvNetConfig::omniglot(5).features(), 64, "28 -> 14 -> 7 -> 3 -> 1");
}

#[test]
fn conv3x3_matches_candle_conv2d() {
    let (t, c_in, c_out, b, h, w) = (2, 3, 4, 2, 7, 5);
    let x = seeded(&[t, c_in, b, h, w], 1);
    let weight = seeded(&[t, c_out, c_in, 3, 3], 2);
    let bias = seeded(&[t, c_out], 3);
    let ours = conv3x3(&x, &weight, &bias).unwrap(); // [t, c_out, b, h, w]
    for task in 0..t {
        let xt = x.get(task).unwrap().transpose(0, 1).unwrap().contiguous().unwrap(); // [b, c_in, h, w]
        let reference = xt
            .conv2d(&weight.get(task).unwrap(), 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.get(task).unwrap().reshape((1, c_out, 1, 1)).unwrap())
            .unwrap(); // [b, c_out, h, w]
        let ours_t = ours.get(task).unwrap().transpose(0, 1).unwrap();
        assert!(max_abs_diff(&ours_t, &reference) < 1e-12);
    }
}

#[test]
fn max_pool_matches_a_loop_including_odd_sizes() {
    for (h, w) in [(4, 4), (7, 7), (3, 5)] {
        let x = seeded(&[1, 2, 2, h, w], 5);
        let pooled = max_pool2x2(&x).unwrap();
        assert_eq!(pooled.dims(), &[1, 2, 2, h / 2, w / 2]);
        let xv = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let pv = pooled.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mut k = 0;
        for plane in 0..4 {
            for r in 0..h / 2 {
                for c in 0..w / 2 {
                    let at = |dr, dc| xv[plane * h * w + (2 * r + dr) * w + 2 * c + dc];
                    let want = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                    assert_eq!(pv[k], want);
                    k += 1;
                }
            }
        }
    }
}

#[test]
fn batch_norm_normalises_each_task_and_channel() {
    let x = (seeded(&[2, 3, 4, 5, 5], 9) * 3.0).unwrap();
    let ones = Tensor::ones((2, 3), DType::F64, &Device::Cpu).unwrap();
    let zeros = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
    let y = batch_norm(&x, &ones, &zeros).unwrap().reshape((2, 3, 100)).unwrap();
    let mean = y.mean(D::Minus1).unwrap();
    let var = y.sqr().unwrap().mean(D::Minus1).unwrap();
    assert!(mean.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() < 1e-12);
    // Biased variance of the normalised values is var / (var + eps), just under 1.
    let v = var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(v.iter().all(|v| (0.999..1.0).contains(v)), "{v:?}");
    // Scale and shift apply per channel.
    let scale = Tensor::new(&[[2.0f64, 1.0, 1.0], [1.0, 1.0, 1.0]], &Device::Cpu).unwrap();
    let shift = Tensor::new(&[[0.0f64, 5.0, 0.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
    let z = batch_norm(&x, &scale, &shift).unwrap().reshape((2, 3, 100)).unwrap();
    let zm = z.mean(D::Minus1).unwrap().to_vec2::<f64>().unwrap();
    assert!((zm[0][1] - 5.0).abs() < 1e-12);
    let zv = z.sqr().unwrap().mean(D::Minus1).unwrap().to_vec2::<f64>().unwrap();
    assert!((zv[0][0] - 4.0).abs() < 1e-2);
}

#[test]
fn cross_entropy_and_accuracy_closed_form() {
    // Uniform logits: loss ln(n). One confident right answer: small loss.
    let logits = Tensor::new(&[[[0.0f64, 0.0, 0.0], [10.0, 0.0, 0.0]]], &Device::Cpu).unwrap(); // [1, 2, 3]
    let labels = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
    let loss = cross_entropy(&logits, &labels).unwrap().to_vec1::<f64>().unwrap()[0];
    let want = (3f64.ln() + (1.0 + 2.0 * (-10f64).exp()).ln()) / 2.0;
    assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    let acc = accuracy(&logits, &labels).unwrap().to_vec1::<f32>().unwrap()[0];
    assert_eq!(acc, 0.5, "argmax of a tie is the first index, label 1 misses");
}

#[test]
fn init_follows_pytorch_bounds_and_seed() {
    let config = ConvNetConfig::omniglot(5);
    let a = init(&config, 7, DType::F32, &Device::Cpu).unwrap();
    let b = init(&config, 7, DType::F32, &Device::Cpu).unwrap();
    let c = init(&config, 8, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let w = |m: &ParamMap, k: &str| m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(w(&a, "block1.conv.weight"), w(&b, "block1.conv.weight"));
    assert_ne!(w(&a, "block1.conv.weight"), w(&c, "block1.conv.weight"));
    // block1 conv: fan_in 64 * 9, bound 1/24; uniform has std bound / sqrt(3).
    let v = w(&a, "block1.conv.weight");
    let bound = 1.0f64 / 24.0;
    assert!(v.iter().all(|&x| (x as f64).abs() <= bound));
    let std = (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt();
    assert!((std - bound / 3f64.sqrt()).abs() < 0.02 * bound, "{std}");
    assert!(w(&a, "block0.bn.weight").iter().all(|&x| x == 1.0));
    assert!(w(&a, "block3.bn.bias").iter().all(|&x| x == 0.0));
    assert_eq!(a["head.weight"].dims(), &[5, 64]);
    assert!(w(&a, "head.weight").iter().all(|x| x.abs() <= 0.125));
}

#[test]
fn safetensors_round_trip_and_param_check() {
    let config = ConvNetConfig { in_channels: 1, image_size: 8, hidden: 3, depth: 2, n_way: 4 };
    let p = init(&config, 3, DType::F32, &Device::Cpu).unwrap();
    let bytes = to_safetensors(&p).unwrap();
    assert_eq!(bytes, to_safetensors(&p).unwrap(), "reproducible bytes");
    let q = from_safetensors(&bytes, &Device::Cpu).unwrap();
    assert_eq!(p.keys().collect::<Vec<_>>(), q.keys().collect::<Vec<_>>());
    for (k, v) in &p {
        assert_eq!(
            v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            q[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    check_params(&config, &q).unwrap();
    let mut wrong = q.clone();
    wrong.remove("head.bias");
    assert_eq!(check_params(&config, &wrong).unwrap_err().to_string(), "missing parameter `head.bias`");
    let other = ConvNetConfig { n_way: 5, ..config };
    assert_eq!(check_params(&other, &q).unwrap_err().to_string(), "parameter `head.bias` has shape [4], expected [5]");
}

#[test]
fn config_errors_name_the_field() {
    let c = ConvNetConfig { in_channels: 1, image_size: 8, hidden: 4, depth: 4, n_way: 5 };
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "invalid image_size = 8: expected at least 2^depth = 16 for depth 4 (each block halves the image)"
    );
    let c = ConvNetConfig { n_way: 1, ..ConvNetConfig::omniglot(5) };
    assert!(c.validate().unwrap_err().to_string().starts_with("invalid n_way = 1"));
}

#[test]
fn input_gradient_matches_finite_differences() {
    // First-order check of the whole forward in f64 (second order is checked in `meta`).
    let config = ConvNetConfig { in_channels: 1, image_size: 6, hidden: 3, depth: 2, n_way: 3 };
    let params = expand(&init(&config, 11, DType::F64, &Device::Cpu).unwrap(), 1).unwrap();
    let labels = Tensor::new(&[[0u32, 1, 2, 1]], &Device::Cpu).unwrap();
    let x0 = seeded(&[1, 4, 1, 6, 6], 4);
    let loss = |x: &Tensor| cross_entropy(&forward(&config, &params, x).unwrap(), &labels).unwrap().sum_all().unwrap();
    let var = candle_core::Var::from_tensor(&x0).unwrap();
    let grads = loss(var.as_tensor()).backward().unwrap();
    let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mut checked = 0;
    for i in (0..base.len()).step_by(7) {
        let fd = |h: f64| {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                loss(&Tensor::from_vec(v, x0.dims(), &Device::Cpu).unwrap()).to_scalar::<f64>().unwrap()
            };
            (at(h) - at(-h)) / (2.0 * h)
        };
        let (a, b) = (fd(1e-4), fd(1e-5));
        if (a - b).abs() > 1e-6 * a.abs().max(1e-6) {
            continue; // a ReLU or max kink within the step
        }
        assert!(
            (a - g[i]).abs() <= 1e-6 * a.abs().max(g[i].abs()).max(1e-8),
            "coordinate {i}: fd {a}, autograd {}",
            g[i]
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} coordinates checked");
}

#[test]
fn im2col_op_matches_the_reference_and_its_gradients() {
    use candle_core::Var;
    let x0 = seeded(&[2, 3, 2, 5, 4], 21);
    let fast = im2col3x3(&x0).unwrap();
    let slow = im2col3x3_reference(&x0).unwrap();
    assert_eq!(fast.dims(), slow.dims());
    assert_eq!(max_abs_diff(&fast, &slow), 0.0);
    // Gradients of a nonlinear function of the columns agree through both paths, and so do
    // the second derivatives (d/dx of <grad, v>), which exercise col2im's own backward.
    let weights = seeded(&[2, 27, 40], 22);
    let direction = seeded(&[2, 3, 2, 5, 4], 23);
    let run = |f: fn(&Tensor) -> candle_core::Result<Tensor>| {
        let x = Var::from_tensor(&x0).unwrap();
        let y = (f(x.as_tensor()).unwrap() * &weights).unwrap().sqr().unwrap().sum_all().unwrap();
        let g = fewshot_grad(&y, &x, true);
        let gv = (&g * &direction).unwrap().sum_all().unwrap();
        let hv = fewshot_grad(&gv, &x, false);
        (g, hv)
    };
    let (g1, h1) = run(im2col3x3);
    let (g2, h2) = run(im2col3x3_reference);
    assert!(max_abs_diff(&g1, &g2) < 1e-12);
    assert!(max_abs_diff(&h1, &h2) < 1e-12);
    assert!(h1.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() > 1.0, "a real second derivative");
}

/// Held by every test of this file that changes an environment variable, from the change
/// until the thread it concerns has read it (tests run in parallel).
static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Gradient of `y` with respect to `x`, keeping its graph when asked (via candle's switch,
/// latched on a fresh thread).
fn fewshot_grad(y: &Tensor, x: &candle_core::Var, keep_graph: bool) -> Tensor {
    let (y, x) = (y.clone(), x.clone());
    std::thread::spawn(move || {
        let _env = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: test-only, under ENV_LOCK; set before this thread's first backward, which
        // latches it; no other thread of this process reads the variable meanwhile except
        // through std's own synchronised accessors.
        unsafe {
            if keep_graph {
                std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1")
            } else {
                std::env::remove_var("CANDLE_GRAD_DO_NOT_DETACH")
            }
        }
        y.backward().unwrap().get(x.as_tensor()).unwrap().clone()
    })
    .join()
    .unwrap()
}

#[test]
fn max_pool_op_matches_the_reference_to_second_order() {
    use candle_core::Var;
    for (h, w) in [(4, 6), (7, 7), (3, 5)] {
        let x0 = seeded(&[2, 3, 2, h, w], 31);
        let fast = max_pool2x2_op(&x0).unwrap();
        let slow = max_pool2x2(&x0).unwrap();
        assert_eq!(fast.dims(), slow.dims());
        assert_eq!(max_abs_diff(&fast, &slow), 0.0);
        let weights = seeded(fast.dims(), 32);
        let direction = seeded(&[2, 3, 2, h, w], 33);
        let run = |f: fn(&Tensor) -> Tensor| {
            let x = Var::from_tensor(&x0).unwrap();
            let y = (f(x.as_tensor()) * &weights).unwrap().sqr().unwrap().sum_all().unwrap();
            let g = fewshot_grad(&y, &x, true);
            let gv = (&g * &direction).unwrap().sum_all().unwrap();
            (g, fewshot_grad(&gv, &x, false))
        };
        let (g1, h1) = run(|x| max_pool2x2_op(x).unwrap());
        let (g2, h2) = run(|x| fewshot_model::max_pool2x2(&x.reshape(x.dims5().unwrap()).unwrap()).unwrap());
        assert!(max_abs_diff(&g1, &g2) < 1e-12, "first order");
        assert!(max_abs_diff(&h1, &h2) < 1e-12, "second order");
        assert!(h1.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() > 0.1);
    }
}
