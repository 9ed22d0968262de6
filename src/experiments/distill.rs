//! `dcm distill`: a consistency student (CM or Direct CM) of any teacher, through its model
//! family (defaults, data, student and run folder are the family's).

use super::args::{LoraArgs, OdeArgs, RunArgs, RuntimeArgs, SingleFileArgs};
use crate::consistency::distance::Distance;
use crate::consistency::objective::Method;
use crate::families::distillation;
use crate::families::family::{refuse_other_flags, DistillDefaults, DistillRequest, FamilyFlags};
use crate::families::open::open;
use crate::nets::lora::LoraConfig;
use crate::runtime::ranks;
use crate::train::distill::DistillConfig;
use crate::train::optim::OptimConfig;
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct DistillArgs {
    /// Objective: `cm` (one teacher step + self target) or `direct` (full teacher solve as target).
    #[arg(long)]
    pub method: Method,
    /// Teacher SPEC (see below).
    #[arg(long)]
    pub teacher: String,
    /// Training data: `toy:NAME`, `mnist`, an image folder or an .npy file [n, …]; default: the
    /// analytic teacher's own distribution. With sd:DIR: a folder of images with captions
    /// (`name.png|jpg` beside `name.txt`, or a `metadata.jsonl` with `file_name` and `text`).
    #[arg(long)]
    pub data: Option<String>,
    #[command(flatten)]
    pub ode: OdeArgs,
    /// Training steps [default: 3000; sd:DIR: 250].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Rows per batch [default: 256; sd:DIR: 16].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Batches whose mean gradient makes one step (for batches that don't fit at once).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// AdamW learning rate [default: 1e-3 for a fresh student, 1e-4 when starting from a network teacher].
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Keep the learning rate constant [default for sd:DIR; else cosine decay to 0].
    #[arg(long, conflicts_with = "cosine_decay")]
    pub constant_lr: bool,
    /// Decay the learning rate to 0 on a cosine [default, except for sd:DIR].
    #[arg(long)]
    pub cosine_decay: bool,
    /// Distance: l2, huber (c = 0.001) or huber:C.
    #[arg(long, default_value = "l2")]
    pub loss: Distance,
    /// Use an EMA of the student with this decay as the CM target network (default: the student itself, stop-gradient).
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Ignore class labels: distill the teacher's unconditional ODE.
    #[arg(long)]
    pub unconditional: bool,
    /// Hidden width of a fresh student MLP (analytic teachers) [default: 128].
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Hidden layers of a fresh student MLP (analytic teachers) [default: 3].
    #[arg(long)]
    pub depth: Option<usize>,
    /// Image size R (sd:DIR): each image is resized and centre-cropped to R×R before the VAE
    /// [default: the UNet's sample_size × the VAE's scale factor, e.g. 512 for SD 1.5].
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Unconditional input of the teacher's guidance (sd:DIR): zeros (the paper's and LCM's
    /// training code) or empty (the empty prompt's encoding) [default: zeros].
    #[arg(long, value_name = "zeros|empty")]
    pub uncond: Option<String>,
    /// Comma-separated module-path suffixes of the UNet layers that get adapters (sd:DIR)
    /// [default: LCM-LoRA's list: to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2,
    /// conv1,conv2,conv_shortcut,downsamplers.0.conv,upsamplers.0.conv,time_emb_proj].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub lora_targets: Option<Vec<String>>,
    /// Metadata column holding the captions of --data's metadata.jsonl / metadata.csv (sd:DIR)
    /// [default: text].
    #[arg(long, value_name = "NAME")]
    pub caption_column: Option<String>,
    /// Pass over files in --data that are neither images (png, jpg, jpeg, webp) nor captions
    /// (.txt, .caption), printing how many, instead of stopping at the first (sd:DIR).
    #[arg(long)]
    pub skip_unknown_files: bool,
    /// Module names in the kohya file `lora.safetensors` (sd:DIR): diffusers (as the published
    /// LCM-LoRA) or ldm (`lora_unet_input_blocks_…`, as kohya's SDXL LoRAs and A1111's own
    /// modules) [default: diffusers].
    #[arg(long, value_name = "diffusers|ldm")]
    pub lora_format: Option<String>,
    /// Start the student's adapters from this LoRA file (sd:DIR; kohya, PEFT or diffusers
    /// layout, diffusers or ldm names): its modules and rank, its update as the start.
    #[arg(long, value_name = "FILE")]
    pub init_lora: Option<String>,
    /// Text-encoder parts of the --init-lora file: refuse (an error) or ignore (train from its
    /// UNet part alone) [default: refuse].
    #[arg(long, value_name = "ignore|refuse")]
    pub lora_text_encoder: Option<String>,
    /// Keep only the inputs of the student UNet's resnets and transformer layers and recompute
    /// them in the backward pass (sd:DIR): far less memory per sample for about one more student
    /// forward per step, the same gradients; a --resume may turn it on or off.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub single_file: SingleFileArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl DistillArgs {
    /// The distillation settings the flags give over the family's defaults.
    pub fn config(&self, d: &DistillDefaults) -> Result<DistillConfig> {
        // With --init-lora the rank comes from the file: only an explicit --lora-rank is kept.
        let lora = match self.lora.lora()? {
            Some(l) => Some(l),
            None if self.init_lora.is_some() => None,
            None => d.lora_rank.map(|rank| LoraConfig {
                rank,
                alpha: rank as f64,
            }),
        };
        Ok(DistillConfig {
            method: self.method,
            solver: self.ode.solver(),
            intervals: self.ode.intervals.unwrap_or(d.intervals),
            guidance: self.ode.guidance_or(d.guidance)?,
            steps: self.steps.unwrap_or(d.steps),
            batch: self.batch.unwrap_or(d.batch),
            optim: OptimConfig {
                lr: self.lr.unwrap_or(d.lr),
                weight_decay: self.weight_decay,
                max_grad_norm: self.max_grad_norm,
                cosine_decay: (d.cosine_decay || self.cosine_decay) && !self.constant_lr,
            },
            loss: self.loss,
            ema_decay: self.ema_decay,
            lora,
            grad_accum: self.grad_accum,
            seed: self.seed,
        })
    }

    fn family_flags(&self) -> FamilyFlags {
        FamilyFlags {
            hidden: self.hidden,
            depth: self.depth,
            unconditional: self.unconditional,
            resolution: self.resolution,
            uncond: self.uncond.clone(),
            lora_targets: self.lora_targets.clone(),
            caption_column: self.caption_column.clone(),
            skip_unknown_files: self.skip_unknown_files,
            lora_format: self.lora_format.clone(),
            init_lora: self.init_lora.clone(),
            lora_text_encoder: self.lora_text_encoder.clone(),
            gradient_checkpointing: self.gradient_checkpointing,
        }
    }
}

pub fn command(a: DistillArgs) -> Result<()> {
    let rt = a.runtime.runtime()?;
    let family = open(&a.teacher, &a.single_file.options()?, &rt)?;
    let flags = a.family_flags();
    refuse_other_flags(&*family, &flags.given())?;
    let config = a.config(&family.distill_defaults())?;
    let req = DistillRequest {
        config: &config,
        data: a.data.as_deref(),
        flags: &flags,
        seed: a.seed,
        rt: &rt,
    };
    let plan = family.plan_distillation(&req)?;
    // A plan may fix the adapters' configuration (an --init-lora file's rank).
    let config = DistillConfig {
        lora: plan.lora().or(config.lora),
        ..config.clone()
    };
    config.validate()?;
    let (out, checkpointing) = a.run.checkpointing(plan.context())?;
    let done = distillation::run(&*plan, &config, &out, checkpointing)?;
    let place = ranks::place();
    if !place.is_root() {
        return Ok(());
    }
    eprintln!(
        "distilled in {:.1} s ({} per-sample teacher evaluations); final loss {:.3e}; wrote {}",
        done.train_seconds,
        done.distilled.teacher_evaluations,
        done.distilled.losses.last().copied().unwrap_or(f32::NAN),
        done.written
    );
    if place.size > 1 {
        let summing = ranks::seconds_summing();
        eprintln!(
            "{} ranks: {summing:.1} s of the {:.1} s in the gradient sum ({:.1} %: the all-reduce and the wait for the slowest rank)",
            place.size,
            done.train_seconds,
            100.0 * summing / done.train_seconds.max(1e-9)
        );
    }
    Ok(())
}
