//! The `dcm` command line: parses flags and calls the library.

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use dcm::experiments::{bench, distill, eval, features, reproduce, reproduce_args, sample, train};
use dcm::models::spec::SPEC_HELP;
use std::process::ExitCode;

/// candle allocates a fresh buffer per op; mimalloc reuses freed memory instead of
/// returning it to the system and page-faulting it back (docs/CANDLE_TRAPS.md, "Memory allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's option setter (its `mimalloc.h`), linked in with the allocator.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in the bundled mimalloc's `mi_option_e` (libmimalloc-sys 0.1.49, v3).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps freed memory mapped: by default mimalloc returns it to the system 10 ms after it is
/// freed, and a training step, which frees and reallocates its whole working set between its
/// phases, page-faults it back in (zeroing each transparent huge page again): a third of the
/// SD LoRA step's time (docs/CANDLE_TRAPS.md).
fn keep_freed_memory() {
    // SAFETY: sets one integer option; mimalloc reads options with atomic loads.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[derive(Parser)]
#[command(
    name = "dcm",
    version,
    arg_required_else_help = true,
    about = "Distill diffusion models into few-step consistency models (CM and Direct CM) and measure ODE error against sample quality"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Solve the teacher's ODE, or run a student's few-step sampler, from given noise.
    #[command(after_help = SPEC_HELP)]
    Sample(sample::SampleArgs),
    /// Distill a teacher into a consistency student (CM or Direct CM).
    #[command(after_help = SPEC_HELP)]
    Distill(distill::DistillArgs),
    /// Print a student's ODE solving error at 1, 2, 4 and 8 steps (--teacher sd:DIR: a LoRA
    /// student's ODE error, FD on CLIP features and CLIP score, written to --out).
    Eval(eval::EvalArgs),
    /// Write the features of a folder of images under a metric network (Inception, DINOv2, CLIP).
    Features(features::FeaturesArgs),
    /// Fréchet distance and kernel distance between two image folders or feature files.
    Fd(features::FdArgs),
    /// Train an ε-prediction MLP teacher by denoising score matching (on latents with --autoencoder).
    TrainTeacher(train::TrainTeacherArgs),
    /// Train the convolutional autoencoder (1×28×28 ↔ C×7×7) on the train split.
    TrainAutoencoder(train::TrainAutoencoderArgs),
    /// Train the CNN classifier whose features the image metrics use.
    TrainFeatnet(train::TrainFeatnetArgs),
    /// Rerun the paper's comparison on the shipped MNIST latent setting and print its table.
    Reproduce(reproduce_args::ReproduceArgs),
    /// Time teacher forward, guided sampling, and one CM and one Direct distillation step
    /// (--workload unet: a Stable Diffusion UNet forward).
    Bench(bench::BenchArgs),
}

/// The command line, where a value may be negative (`--lr -1` is then refused by the
/// command, naming the flag, rather than read as an unknown flag `-1`).
fn command_line() -> clap::Command {
    let mut cli = Cli::command();
    let names: Vec<String> = cli.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        cli = cli.mut_subcommand(name, |sub| {
            sub.mut_args(|a| {
                let takes_values = a.get_action().takes_values();
                a.allow_negative_numbers(takes_values)
            })
        });
    }
    cli
}

/// The arguments with a non-finite negative value joined to its flag (`--lr -inf` →
/// `--lr=-inf`): clap reads `-1` as a value but `-inf` as short flags, whose error would name
/// no flag of the user's; joined, the command refuses the value by its flag.
fn joined_args() -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    for a in std::env::args() {
        let negative = matches!(a.to_ascii_lowercase().as_str(), "-inf" | "-infinity" | "-nan");
        match args.last_mut() {
            Some(flag) if negative && flag.starts_with("--") && !flag.contains('=') => {
                flag.push('=');
                flag.push_str(&a);
            }
            _ => args.push(a),
        }
    }
    args
}

/// Clap's message folded into one line (help and version print as usual).
fn parse_args() -> Result<Cli, ExitCode> {
    command_line()
        .try_get_matches_from(joined_args())
        .and_then(|m| Cli::from_arg_matches(&m))
        .map_err(|e| {
            if !e.use_stderr() {
                e.exit();
            }
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                // A bare `dcm`: the list of commands.
                let _ = e.print();
                return ExitCode::from(2);
            }
            let text = e.to_string();
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{}", lines.join(" "));
            ExitCode::from(2)
        })
}

fn main() -> ExitCode {
    keep_freed_memory();
    // candle's element-wise pool spins for its next job after each op, taking a core from
    // the matrix products that carry the work (dcm's own kernels and gemm run on rayon);
    // the remaining candle ops are small enough for one thread (docs/PERFORMANCE.md).
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Err(e) = dcm::runtime::signals::install() {
        eprintln!("warning: cannot install signal handlers: {e}");
    }
    // Under mpirun/srun: join the other ranks; MPI ends when the guard drops, after the command.
    let _ranks = match dcm::runtime::ranks::init() {
        Ok(guard) => guard,
        Err(e) => return exit_code(Err(e)),
    };
    // The command runs on a worker of rayon's pool, so the parallel kernels it calls split
    // work with the other workers directly instead of handing it over from outside the pool.
    exit_code(rayon::scope(|_| run(cli.command)))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Sample(a) => sample::command(a),
        Command::Distill(a) => distill::command(a),
        Command::Eval(a) => eval::command(a),
        Command::Features(a) => features::features_command(a),
        Command::Fd(a) => features::fd_command(a),
        Command::TrainTeacher(a) => train::teacher_command(a),
        Command::TrainAutoencoder(a) => train::autoencoder_command(a),
        Command::TrainFeatnet(a) => train::featnet_command(a),
        Command::Reproduce(a) => reproduce::command(a),
        Command::Bench(a) => bench::command(a),
    }
}

fn exit_code(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(stop) = e.downcast_ref::<dcm::runtime::signals::Interrupted>() {
                eprintln!("{stop}");
                return ExitCode::from(128 + stop.signal as u8);
            }
            if let Some(stop) = e.downcast_ref::<dcm::runtime::signals::Stopped>() {
                eprintln!("{stop}");
                return ExitCode::from(128 + stop.signal as u8);
            }
            eprintln!("error: {}", dcm::runtime::message::one_line(&e));
            // The other ranks may be waiting for this one: end the job now.
            dcm::runtime::ranks::abort(2);
            ExitCode::from(2)
        }
    }
}
