//! Distilling a small-model teacher: the training data (`--data`, encoded into a latent
//! teacher's space, or the analytic teacher's own distribution), the student (a LoRA or fully
//! fine-tuned copy of a network teacher, or a fresh MLP for an analytic one) and its folder.

use crate::data::toy::DEFAULT_SIZE;
use crate::data::Dataset;
use crate::diffusion::denoiser::Denoiser;
use crate::families::family::{DistillJob, DistillPlan, DistillRequest, RunInputs, RunRecord};
use crate::models::model_dir::{self, save_run};
use crate::models::spec::TeacherSpec;
use crate::models::student::StudentConfig;
use crate::models::teacher::Teacher;
use crate::nets::autoencoder::encode_all;
use crate::nets::layers::Params;
use crate::nets::mlp::MlpConfig;
use crate::nets::network::NetConfig;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::seeded;
use crate::train::distill::{DistillConfig, Distilled};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// Working copies of a batch one distillation step holds (x₀, noise, x_t, targets, the
/// student's activations and their gradients).
const WORKING_COPIES: usize = 32;

/// A fresh student MLP's sizes when the flags give none.
const FRESH_HIDDEN: usize = 128;
const FRESH_DEPTH: usize = 3;
const FRESH_TIME_DIM: usize = 32;

/// The learning rate of a fresh student, and of one that starts from a network teacher.
pub const FRESH_LR: f64 = 1e-3;
pub const FINE_TUNE_LR: f64 = 1e-4;

/// A small-model distillation: data, student and start weights, all loaded while planning.
pub struct SmallPlan<'a> {
    teacher: &'a Teacher,
    spec: String,
    data_spec: Option<String>,
    unconditional: bool,
    conditional: bool,
    data: Dataset,
    net: NetConfig,
    start: Params,
    config: DistillConfig,
}

pub fn plan<'a>(teacher: &'a Teacher, spec: String, req: &DistillRequest) -> Result<SmallPlan<'a>> {
    let unconditional = req.flags.unconditional || teacher.num_classes() == 0;
    if unconditional && req.config.guidance != 1.0 {
        bail!("--guidance: the distilled ODE is unconditional (the teacher has no classes, or --unconditional), so guidance would change nothing");
    }
    let data = training_data(teacher, req)?;
    let conditional = !unconditional && data.labels.iter().any(Option::is_some);
    let data = if conditional { data } else { data.without_labels() };
    let (net, start) = student(teacher, req, &data)?;
    Ok(SmallPlan {
        teacher,
        spec,
        data_spec: req.data.map(str::to_string),
        unconditional: req.flags.unconditional,
        conditional,
        data,
        net,
        start,
        config: req.config.clone(),
    })
}

/// A network teacher's own weights, or a fresh MLP sized by the flags.
fn student(teacher: &Teacher, req: &DistillRequest, data: &Dataset) -> Result<(NetConfig, Params)> {
    let rt = req.rt;
    if let Teacher::Network { config, dir, .. } = teacher {
        return Ok((config.clone(), rt.trainable(&model_dir::load_params(dir)?)?));
    }
    let net = MlpConfig {
        sample_shape: data.sample_shape(),
        hidden: req.flags.hidden.unwrap_or(FRESH_HIDDEN),
        depth: req.flags.depth.unwrap_or(FRESH_DEPTH),
        time_dim: FRESH_TIME_DIM,
        num_classes: teacher.num_classes(),
        schedule: teacher.schedule_kind()?,
    };
    net.validate()?;
    // The init stream is the seed's successor, so data and init draws never coincide.
    let init = rt.trainable(&net.init(&mut seeded(req.seed.wrapping_add(1)))?)?;
    Ok((NetConfig::Mlp(net), init))
}

/// `--data` (images are encoded with a latent teacher's autoencoder, its train split), or an
/// analytic teacher's own distribution.
fn training_data(teacher: &Teacher, req: &DistillRequest) -> Result<Dataset> {
    let Some(spec) = req.data else {
        return teacher.sample_data(DEFAULT_SIZE, &mut seeded(req.seed ^ 0x5eed));
    };
    let data = Dataset::load(spec, req.seed).with_context(|| format!("--data {spec}"))?;
    let data = match teacher.autoencoder(req.rt)? {
        Some(ae) if data.sample_shape() == ae.image_shape() => {
            let (train, _) = data.standard_split()?;
            Dataset::new(encode_all(&ae, &train.x)?, train.labels, train.num_classes)?
        }
        _ => data,
    };
    if let Some(shape) = teacher.sample_shape() {
        ensure!(
            shape == data.sample_shape(),
            "--data {spec}: samples have shape {:?} but the teacher expects {:?}",
            data.sample_shape(),
            shape
        );
    }
    Ok(data)
}

impl DistillPlan for SmallPlan<'_> {
    fn context(&self) -> serde_json::Value {
        serde_json::json!({"teacher": self.spec, "data": self.data_spec, "unconditional": self.unconditional})
    }

    fn prepare(&self, _out: &Path) -> Result<DistillJob<'_>> {
        let per_step = f32_bytes(&[self.config.batch, self.data.x.elem_count() / self.data.len()]);
        ensure_fits(
            per_step * WORKING_COPIES as f64,
            &format!("--batch {}", self.config.batch),
        )?;
        // A LoRA student of a network teacher starts from the teacher's own weights, so the
        // teacher is the student with its adapters off.
        let shares_weights = self.config.lora.is_some() && matches!(self.teacher, Teacher::Network { .. });
        Ok(DistillJob {
            architecture: Box::new(self.net.clone()),
            start: self.start.clone(),
            data: Box::new(self.data.clone()),
            target_source: (!shares_weights).then_some(self.teacher as &dyn Denoiser),
        })
    }

    fn outputs(&self) -> Vec<PathBuf> {
        let mut files = vec![model_dir::CONFIG, model_dir::WEIGHTS, model_dir::LOSS_LOG];
        if self.config.lora.is_some() {
            files.push(model_dir::ADAPTERS);
        }
        files.into_iter().map(PathBuf::from).collect()
    }

    /// A network teacher's folder and a `--data` file or folder.
    fn inputs(&self) -> Result<RunInputs> {
        let teacher = match self.teacher {
            Teacher::Network { dir, .. } => files_under(dir)?,
            _ => Vec::new(),
        };
        let data = match self.data_spec.as_deref().map(Path::new) {
            Some(p) if p.exists() => files_under(p)?,
            _ => Vec::new(),
        };
        Ok(RunInputs { teacher, data })
    }

    fn save(&self, out: &Path, distilled: &Distilled, run: &RunRecord) -> Result<String> {
        let train_seconds = run.train_seconds;
        let config = StudentConfig {
            teacher: TeacherSpec::portable(&self.spec),
            data: self.data_spec.clone().unwrap_or_else(|| "teacher distribution".into()),
            conditional: self.conditional,
            net: self.net.clone(),
            distill: self.config.clone(),
            teacher_evaluations: distilled.teacher_evaluations,
            train_seconds,
        };
        save_run(out, &config, &distilled.params, &distilled.losses)?;
        if let Some(adapters) = &distilled.adapters {
            model_dir::save_tensors(&out.join(model_dir::ADAPTERS), adapters)?;
        }
        Ok(out.display().to_string())
    }
}

/// `path` itself if a file, else every file under it (hidden ones left out), sorted.
fn files_under(path: &Path) -> Result<Vec<std::path::PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path).with_context(|| format!("{}: cannot list", path.display()))?;
    for entry in entries {
        let p = entry?.path();
        if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            continue;
        }
        files.extend(files_under(&p)?);
    }
    files.sort();
    Ok(files)
}
