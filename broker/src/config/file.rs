//! The `--config` TOML file: its keys are the flags' long names, read from the clap
//! definition itself, so every flag is a key and anything else is an error naming it.

use super::*;

/// The extra arguments that bring a config file's keys into a command line: one
/// `--key=value` per key that neither the command line nor its environment variable set
/// (for a list, one per element; for an on/off flag, `--key` when true). Append them to
/// the arguments and parse again. `cmd` is the subcommand whose flags are the keys and
/// `matches` what it parsed without the file.
pub fn file_args(
    cmd: &clap::Command,
    matches: &clap::ArgMatches,
    path: &Path,
) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing the config file {}", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && !a.is_hide_set() && name != "config")
            .with_context(|| {
                format!(
                    "config file {}: unknown key {key:?} (keys are the long flags of `taskraft {} --help`)",
                    path.display(),
                    cmd.get_name()
                )
            })?;
        if matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = |what: &str| format!("config file {}: key {key:?} {what}", path.display());
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => match value {
                toml::Value::Boolean(b) => {
                    if *b == matches!(arg.get_action(), ArgAction::SetTrue) {
                        out.push(format!("--{name}").into());
                    }
                }
                _ => bail!(bad("takes true or false")),
            },
            action => {
                let values = match value {
                    toml::Value::Array(items) if matches!(action, ArgAction::Append) => {
                        items.iter().collect()
                    }
                    toml::Value::Array(_) => bail!(bad("takes one value, not a list")),
                    v => vec![v],
                };
                for v in values {
                    let v = match v {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        _ => bail!(bad("takes a string, number or boolean")),
                    };
                    out.push(format!("--{name}={v}").into());
                }
            }
        }
    }
    Ok(out)
}

/// Parses `taskraft serve`'s flags from `argv` (its first item is the program name),
/// with the `--config` file when one is named: what `main` does, for tests and embedding.
pub fn parse_serve<I, T>(argv: I) -> anyhow::Result<ServeArgs>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::{Args, FromArgMatches};
    let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let matches = cmd.clone().try_get_matches_from(&argv)?;
    let args = ServeArgs::from_arg_matches(&matches)?;
    let Some(path) = &args.config else {
        return Ok(args);
    };
    let extra = file_args(&cmd, &matches, path)?;
    let matches = cmd.try_get_matches_from(argv.into_iter().chain(extra))?;
    Ok(ServeArgs::from_arg_matches(&matches)?)
}
