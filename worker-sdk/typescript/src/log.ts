// A minimal structured logger interface, so applications can plug in pino, winston or
// their own. The default writes to stderr (never stdout) at the level named by the
// `TASKRAFT_LOG` environment variable: error, warn (default), info, debug or off.

/** Fields attached to a log line. */
export type LogFields = Record<string, unknown>;

/** Where the SDK logs. Any object with these four methods will do. */
export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

const LEVELS = ["debug", "info", "warn", "error"] as const;
type Level = (typeof LEVELS)[number];

/** A logger that writes `taskraft <level> <message> <fields as JSON>` lines to stderr. */
export function stderrLogger(minLevel: Level | "off" = envLevel()): Logger {
  const min = minLevel === "off" ? LEVELS.length : LEVELS.indexOf(minLevel);
  const at = (level: Level) => (message: string, fields?: LogFields) => {
    if (LEVELS.indexOf(level) < min) return;
    const extra = fields && Object.keys(fields).length > 0 ? ` ${safeJson(fields)}` : "";
    process.stderr.write(`taskraft ${level} ${message}${extra}\n`);
  };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

function envLevel(): Level | "off" {
  const v = (process.env["TASKRAFT_LOG"] ?? "warn").toLowerCase();
  return v === "off" || (LEVELS as readonly string[]).includes(v) ? (v as Level | "off") : "warn";
}

function safeJson(fields: LogFields): string {
  try {
    return JSON.stringify(fields, (_k, v: unknown) => (v instanceof Error ? v.message : v));
  } catch {
    return "{}";
  }
}
