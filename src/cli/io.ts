// Where the CLI writes: injectable, so specs can run commands in-process and read the output.
export interface Io {
  out(line: string): void
  err(line: string): void
  /** Writes without a newline (progress bars). */
  write(text: string): void
  isTTY: boolean
  /** Writes to stderr without a newline (the download bar), and whether stderr is a terminal. */
  errWrite?(text: string): void
  errIsTTY?: boolean
  /** Where `chat` reads its lines (default: stdin). */
  input?: NodeJS.ReadableStream
}

export const processIo: Io = {
  out: (l) => void process.stdout.write(l + '\n'),
  err: (l) => void process.stderr.write(l + '\n'),
  write: (t) => void process.stdout.write(t),
  isTTY: !!process.stdout.isTTY,
  errWrite: (t) => void process.stderr.write(t),
  errIsTTY: !!process.stderr.isTTY,
  // A getter: touching process.stdin opens it, which only `chat` should do.
  get input() {
    return process.stdin
  },
}
