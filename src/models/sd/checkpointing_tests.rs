//! Gradient checkpointing of a LoRA student (`--gradient-checkpointing`) gives the plain path's
//! gradients of the whole distillation loss — CM and Direct CM, guided teacher (the student
//! with its adapters off), stop-gradient target — on the tiny SD 1.x fixture pipeline.

use super::pipeline::Pipeline;
use super::student::LoraUnet;
use super::test_util::fixture;
use crate::consistency::batch::Batch;
use crate::consistency::distance::Distance;
use crate::consistency::objective::Method;
use crate::diffusion::condition::{Condition, TextEmbedding};
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::solver::Solver;
use crate::nets::lora::LoraConfig;
use crate::nets::network::{AdaptersOff, Architecture};
use crate::nets::sd::unet::DEFAULT_LORA_TARGETS;
use crate::runtime::device::Runtime;
use crate::runtime::noise::{seeded, standard_normal};
use candle_core::{DType, Device, Tensor, Var};

const LORA: LoraConfig = LoraConfig { rank: 4, alpha: 4.0 };

fn randn(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    (standard_normal(&mut seeded(seed), shape, &Device::Cpu).unwrap() * scale).unwrap()
}

/// ‖a − b‖ / ‖a‖.
fn relative_difference(a: &Tensor, b: &Tensor) -> f64 {
    let norm = |t: &Tensor| t.to_dtype(DType::F64)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>();
    norm(&(a - b).unwrap()).unwrap() / norm(a).unwrap().max(f64::MIN_POSITIVE)
}

/// The gradient of every adapter tensor of one `method` loss on a batch of 3, adapters on
/// LCM-LoRA's targets with nonzero B (so that A has a gradient too).
fn gradients(method: Method, checkpointing: bool) -> Vec<Tensor> {
    let pipeline = Pipeline::open(&fixture("sd1")).unwrap();
    let rt = Runtime::parse("cpu", "f32").unwrap();
    let targets = DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect();
    let (mut arch, base) = LoraUnet::of_pipeline(&pipeline, &rt, targets).unwrap();
    arch.gradient_checkpointing = checkpointing;
    let mut vars = Vec::new();
    let (mut trained, mut frozen) = (base.clone(), base);
    for (i, (name, a)) in arch
        .init_adapters(LORA, &mut seeded(1))
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let t = match name.contains("lora_B") {
            true => randn(a.dims(), 100 + i as u64, 0.1),
            false => a,
        };
        let v = Var::from_tensor(&t).unwrap();
        trained.insert(name.clone(), v.as_tensor().clone());
        frozen.insert(name, t);
        vars.push(v);
    }
    let student = arch.build(&trained, Some(LORA)).unwrap();
    let target = arch.build(&frozen, Some(LORA)).unwrap();
    let base_net = AdaptersOff(&*student);
    let teacher = Guided::new(&base_net, 3.0);
    let ctx = arch.unet.layout().unwrap().context_dim;
    let text = TextEmbedding {
        tokens: randn(&[3, 7, ctx], 2, 1.0),
        pooled: None,
        time_ids: None,
    };
    let null = TextEmbedding {
        tokens: text.tokens.zeros_like().unwrap(),
        ..text.clone()
    };
    let cond = Condition::Text { text, null };
    let grid = Discretization::new(10).unwrap();
    let x = randn(&[3, 4, 8, 8], 3, 1.0);
    let t = [grid.start(0), grid.start(4), grid.start(9)];
    let batch = Batch {
        teacher: &teacher,
        student: &*student,
        target_net: &*target,
        solver: Solver::Ddim,
        grid,
        distance: Distance::L2,
        x: &x,
        t: &t,
        cond: &cond,
    };
    let grads = method.objective().loss(&batch).unwrap().backward().unwrap();
    vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect()
}

/// Every adapter's gradient with checkpointing equals the plain path's within 1e-6 (relative,
/// in norm; f32 sums taken in another order round differently), for CM and Direct.
#[test]
fn distillation_gradients_are_the_plain_paths() {
    for method in Method::compared() {
        let (plain, ckpt) = (gradients(method, false), gradients(method, true));
        let worst = (plain.iter().zip(&ckpt))
            .map(|(p, c)| relative_difference(p, c))
            .fold(0.0, f64::max);
        eprintln!(
            "{}: {} adapter tensors, largest relative gradient difference {worst:.2e}",
            method.title(),
            plain.len()
        );
        assert!(worst <= 1e-6, "{}: {worst:e}", method.title());
    }
}
