//! `dcm eval`: a student's ODE-solving error at several step counts and its family's
//! sample-quality metrics (a LoRA student of a Stable Diffusion teacher: the paper's table,
//! written to a folder).

use super::args::{refuse_recorded_options, OdeArgs, RuntimeArgs, SingleFileArgs};
use crate::eval::metric_nets::MetricFiles;
use crate::families::family::EvalRequest;
use crate::families::open::{open, open_recorded};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// A student folder written by `dcm distill`; with --teacher sd:DIR, a distillation run
    /// folder holding lora.safetensors (and student.json, whose N, w and solver are the defaults).
    #[arg(long, required_unless_present = "lora")]
    pub student: Option<PathBuf>,
    /// Stable Diffusion teacher sd:DIR of a LoRA student (--lora FILE or --student OUT).
    #[arg(long)]
    pub teacher: Option<String>,
    /// A LoRA student of the sd:DIR teacher (kohya, PEFT or diffusers' mixed layout).
    #[arg(long, value_name = "FILE", conflicts_with = "student", requires = "teacher")]
    pub lora: Option<PathBuf>,
    /// Text-encoder parts of the --lora file: refuse (an error) or ignore (evaluate its UNet
    /// part alone; dcm does not apply LoRAs to text encoders) [default: refuse].
    #[arg(long, value_name = "ignore|refuse", requires = "lora")]
    pub lora_text_encoder: Option<String>,
    /// SD: prompts, one line per noise row (a file of one line applies it to every row).
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// SD: initial latents x_T [B, C, h, w], .npy, shared by the teacher and the student.
    #[arg(long, value_name = "IN.npy")]
    pub noise: Option<PathBuf>,
    /// SD: the teacher's solve the student is measured against (N is also the student's grid).
    #[command(flatten)]
    pub ode: OdeArgs,
    /// SD: negative prompt of the teacher's guidance [default: as the diffusers pipeline].
    #[arg(long, conflicts_with = "uncond", allow_hyphen_values = true)]
    pub negative_prompt: Option<String>,
    /// SD: unconditional input of the teacher's guidance: zeros or empty.
    #[arg(long, value_name = "zeros|empty")]
    pub uncond: Option<String>,
    /// SD: a transformers CLIPModel folder (ViT-L/14 as the paper) for CLIP score (raw cosine),
    /// the aesthetic score's embeddings and FD-CLIP.
    #[arg(long, value_name = "CLIP_DIR")]
    pub clip: Option<PathBuf>,
    /// SD: pytorch-fid's Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth) for FID and KD.
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// SD: a transformers Dinov2Model folder (dinov2-large as the paper) for FD-DINOv2, KD and the
    /// DINOv2 distance of each sample to the teacher's.
    #[arg(long, value_name = "DIR")]
    pub dino: Option<PathBuf>,
    /// SD: the LAION aesthetic predictor (sac+logos+ava1-l14-linearMSE.pth; needs --clip ViT-L/14).
    #[arg(long, value_name = "FILE")]
    pub aesthetic: Option<PathBuf>,
    /// SD: reuse the teacher's reference samples in this folder (an earlier EVAL_DIR/reference).
    #[arg(long, value_name = "DIR")]
    pub reference: Option<PathBuf>,
    /// SD: a folder of real PNG/JPEG/WebP images for FD and KD against them (needs a network).
    #[arg(long, value_name = "FOLDER")]
    pub real: Option<PathBuf>,
    /// SD: rows per UNet, VAE and CLIP call [default: 8].
    #[arg(long)]
    pub batch: Option<usize>,
    /// SD: output folder: eval.json, eval.csv, eval.md, reference/, students/kK/.
    #[arg(long, value_name = "EVAL_DIR")]
    pub out: Option<PathBuf>,
    /// Number of noise samples (students of `dcm distill` on the built-in teachers) [default: 2000].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Student step counts to evaluate, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub steps: Vec<usize>,
    /// Evaluation seed: the noise and the sampler's re-noise streams (`dcm reproduce` seed K uses the same).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// SD: evaluate a --student OUT against a teacher whose files differ from those it was
    /// distilled from (student.json records their content hashes) instead of refusing.
    #[arg(long)]
    pub allow_other_teacher: bool,
    #[command(flatten)]
    pub single_file: SingleFileArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn command(a: EvalArgs) -> Result<()> {
    let rt = a.runtime.runtime()?;
    let family = match (&a.teacher, &a.student) {
        (Some(spec), _) => open(spec, &a.single_file.options()?, &rt)?,
        (None, Some(dir)) => {
            refuse_recorded_options(&a.single_file)?;
            open_recorded(dir, &rt)?
        }
        (None, None) => bail!("give --student DIR (or --teacher sd:DIR with --lora FILE)"),
    };
    family.evaluate(&request(&a), &rt)
}

fn request(a: &EvalArgs) -> EvalRequest {
    EvalRequest {
        student: a.student.clone(),
        lora: a.lora.clone(),
        lora_text_encoder: a.lora_text_encoder.clone(),
        teacher: a.teacher.clone(),
        prompts: a.prompts.clone(),
        noise: a.noise.clone(),
        solver: a.ode.solver,
        intervals: a.ode.intervals,
        guidance: a.ode.guidance,
        negative_prompt: a.negative_prompt.clone(),
        uncond: a.uncond.clone(),
        metrics: MetricFiles {
            clip: a.clip.clone(),
            inception: a.inception.clone(),
            dino: a.dino.clone(),
            aesthetic: a.aesthetic.clone(),
            real: a.real.clone(),
        },
        reference: a.reference.clone(),
        batch: a.batch,
        out: a.out.clone(),
        samples: a.samples,
        steps: a.steps.clone(),
        seed: a.seed,
        device: a.runtime.device.clone(),
        dtype: a.runtime.dtype.clone(),
        allow_other_teacher: a.allow_other_teacher,
    }
}
