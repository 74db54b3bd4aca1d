//! What the CLI prints besides its results: the global `-q`/`-v` and `--color` settings,
//! status lines, details, warnings, errors and progress bars.
//!
//! - Results asked for (the `inspect` report, `--json` output, a CSV to `--out -`, the summary
//!   table of `eval`) always go to stdout.
//! - Status lines (what was done, files written) go to stdout unless `-q`.
//! - Details (`-v`: files read, settings in effect, timings) go to stderr.
//! - Warnings and errors go to stderr always, `warning:` and `error:` coloured when colour is
//!   on.
//! - Progress bars are drawn on stderr when it is a terminal, never with `-q`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How much the CLI says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: results, warnings and errors only.
    Quiet = 0,
    /// Results and status lines.
    Normal = 1,
    /// `-v`: also what was read and the settings in effect, on stderr.
    Verbose = 2,
}

/// When to colour the output (`--color`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// When stderr is a terminal and `NO_COLOR` is not set.
    Auto,
    /// Always (also into pipes and files).
    Always,
    /// Never.
    Never,
}

impl ColorWhen {
    /// Whether this choice colours a stream that `is_terminal` (or not), given whether the
    /// environment sets `NO_COLOR` (to anything non-empty).
    pub fn resolve(self, is_terminal: bool, no_color: bool) -> bool {
        match self {
            ColorWhen::Always => true,
            ColorWhen::Never => false,
            ColorWhen::Auto => is_terminal && !no_color,
        }
    }

    /// The matching clap setting (help and usage errors).
    pub fn clap(self) -> clap::ColorChoice {
        match self {
            ColorWhen::Auto => clap::ColorChoice::Auto,
            ColorWhen::Always => clap::ColorChoice::Always,
            ColorWhen::Never => clap::ColorChoice::Never,
        }
    }
}

static VERBOSITY: AtomicU8 = AtomicU8::new(Verbosity::Normal as u8);
static COLOR: AtomicBool = AtomicBool::new(false);

/// Sets the verbosity and the colour choice for the whole process (called once by `main`).
pub fn init(verbosity: Verbosity, color: ColorWhen) {
    VERBOSITY.store(verbosity as u8, Ordering::Relaxed);
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let on = color.resolve(std::io::stderr().is_terminal(), no_color);
    COLOR.store(on, Ordering::Relaxed);
    console::set_colors_enabled(on);
    console::set_colors_enabled_stderr(on);
}

/// The verbosity in force.
pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        _ => Verbosity::Verbose,
    }
}

/// Whether `-q` was given.
pub fn quiet() -> bool {
    verbosity() == Verbosity::Quiet
}

/// Whether colour is on.
pub fn color() -> bool {
    COLOR.load(Ordering::Relaxed)
}

fn paint(text: &str, code: &str) -> String {
    if color() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// A status line on stdout, unless `-q`. A closed stdout (a pipe into `head`) is not an error.
pub fn status(line: impl AsRef<str>) {
    if !quiet() {
        let _ = writeln!(std::io::stdout(), "{}", line.as_ref());
    }
}

/// A detail line on stderr, with `-v` only.
pub fn detail(line: impl AsRef<str>) {
    if verbosity() == Verbosity::Verbose {
        eprintln!("{}", line.as_ref());
    }
}

/// A warning on stderr (always).
pub fn warn(message: impl AsRef<str>) {
    eprintln!("{} {}", paint("warning:", "1;33"), message.as_ref());
}

/// The error line `main` prints.
pub fn error_line(message: impl AsRef<str>) -> String {
    format!("{} {}", paint("error:", "1;31"), message.as_ref())
}

/// Whether progress bars are drawn: stderr is a terminal and not `-q`.
pub fn progress_enabled() -> bool {
    !quiet() && std::io::stderr().is_terminal()
}

/// A progress bar of `len` steps on stderr, hidden when [`progress_enabled`] is false.
pub fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if !progress_enabled() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

static TASK: Mutex<String> = Mutex::new(String::new());

/// Names what the next image bars count (`eval`, `eval --sweep: every exit`, ...).
pub fn set_task(task: impl Into<String>) {
    if let Ok(mut t) = TASK.lock() {
        *t = task.into();
    }
}

/// A bar over `images` images for the current task ([`set_task`]); hidden off a terminal.
pub fn image_bar(images: usize) -> ProgressBar {
    let bar = progress_bar(images as u64);
    let style = ProgressStyle::with_template(
        "{msg} {bar:30.cyan/blue} {pos}/{len} images [{elapsed} < {eta}]",
    )
    .expect("valid template");
    bar.set_style(style);
    bar.set_message(TASK.lock().map(|t| t.clone()).unwrap_or_default());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_choice() {
        for (when, tty, no_color, on) in [
            (ColorWhen::Auto, true, false, true),
            (ColorWhen::Auto, false, false, false),
            (ColorWhen::Auto, true, true, false),
            (ColorWhen::Always, false, true, true),
            (ColorWhen::Never, true, false, false),
        ] {
            assert_eq!(when.resolve(tty, no_color), on, "{when:?} {tty} {no_color}");
        }
    }
}
