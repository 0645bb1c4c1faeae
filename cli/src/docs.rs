//! Shell completions and the manual page, generated from the command's own
//! definition (`Cli`), so they never drift from what it accepts.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::Cli;

/// Writes `shell`'s completion script for `plugboard` to `out`.
pub(crate) fn completions(shell: Shell, out: &mut impl Write) {
    clap_complete::generate(shell, &mut Cli::command(), "plugboard", out);
}

/// Writes the manual page (roff): `plugboard(1)`, then a section per
/// subcommand with its own options.
pub(crate) fn manpage(out: &mut impl Write) -> std::io::Result<()> {
    let command = Cli::command();
    clap_mangen::Man::new(command.clone()).render(out)?;
    for sub in command.get_subcommands() {
        let name = format!("plugboard {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let man = clap_mangen::Man::new(sub.clone().bin_name(name));
        man.render_description_section(out)?;
        man.render_options_section(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_know_every_subcommand_and_flag() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = text(|out| completions(shell, out));
            for word in ["serve", "expose", "connect", "legacy-listen", "completions"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn the_manual_page_has_every_subcommand_and_its_options() {
        let page = text(|out| manpage(out).unwrap());
        assert!(
            page.starts_with(".ie"),
            "roff: {}",
            &page[..40.min(page.len())]
        );
        assert!(page.contains(".TH plugboard 1"), "the title");
        for word in [
            "PLUGBOARD SERVE",
            "PLUGBOARD EXPOSE",
            "legacy\\-listen",
            "direct\\-listen",
        ] {
            assert!(page.contains(word), "no {word}");
        }
    }
}
