// Small promise-based primitives for the worker: a fair counting semaphore whose waits
// can be withdrawn, and a one-shot latch.

/** A pending `Semaphore.acquire`. */
export interface Acquire {
  /** Resolves when the permit is granted (then the holder must `release()` it). */
  readonly granted: Promise<void>;
  /**
   * Withdraws the wait. Returns false when the permit was already granted: the caller
   * then holds it and must release it.
   */
  cancel(): boolean;
}

/** A FIFO counting semaphore: a permit goes to the longest waiter first. */
export class Semaphore {
  private permits: number;
  private readonly waiters: Array<() => void> = [];

  constructor(permits: number) {
    this.permits = permits;
  }

  /** Permits free right now (0 while anyone waits). */
  get available(): number {
    return this.permits;
  }

  /** Takes a permit if one is free and nobody waits. */
  tryAcquire(): boolean {
    if (this.permits > 0 && this.waiters.length === 0) {
      this.permits--;
      return true;
    }
    return false;
  }

  /** Waits for a permit. */
  acquire(): Acquire {
    if (this.tryAcquire()) return { granted: Promise.resolve(), cancel: () => false };
    let grant!: () => void;
    let isGranted = false;
    const granted = new Promise<void>((resolve) => {
      grant = () => {
        isGranted = true;
        resolve();
      };
    });
    this.waiters.push(grant);
    return {
      granted,
      cancel: () => {
        if (isGranted) return false;
        const i = this.waiters.indexOf(grant);
        if (i >= 0) this.waiters.splice(i, 1);
        return true;
      },
    };
  }

  /** Returns a permit (to the longest waiter, if any). */
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.permits++;
  }
}

/**
 * A promise that is resolved once, from outside.
 *
 * `race` waits for another promise or the latch, whichever comes first, and leaves no
 * reaction behind on the latch: `Promise.race([p, latch.promise])` in a loop would pile
 * one up per iteration until the latch opens (for a worker's shutdown latch, never).
 */
export class Latch<T = void> {
  readonly promise: Promise<T>;
  private resolveFn!: (v: T) => void;
  private done = false;
  private readonly listeners = new Set<() => void>();

  constructor() {
    this.promise = new Promise<T>((resolve) => {
      this.resolveFn = resolve;
    });
  }

  /** True once `open` was called. */
  get isOpen(): boolean {
    return this.done;
  }

  /** Resolves the promise (later calls do nothing). */
  open(value: T): void {
    if (this.done) return;
    this.done = true;
    this.resolveFn(value);
    for (const l of this.listeners) l();
    this.listeners.clear();
  }

  /** Resolves with `p`'s value, or with `ifOpen` when the latch opens first. */
  race<U, O>(p: Promise<U>, ifOpen: O): Promise<U | O> {
    if (this.done) return Promise.resolve(ifOpen);
    return new Promise<U | O>((resolve, reject) => {
      const onOpen = () => resolve(ifOpen);
      this.listeners.add(onOpen);
      p.then(
        (v) => {
          this.listeners.delete(onOpen);
          resolve(v);
        },
        (e: unknown) => {
          this.listeners.delete(onOpen);
          reject(e);
        },
      );
    });
  }
}

/**
 * A FIFO of values put from callbacks (a stream's `data` events) and taken by one
 * loop; `close` marks the end (after what was put).
 */
export class Mailbox<T> {
  private readonly items: T[] = [];
  private closed = false;
  private wakers: Array<() => void> = [];

  /** Adds a value (ignored once closed). */
  put(v: T): void {
    if (this.closed) return;
    this.items.push(v);
    this.wake();
  }

  /** No more values come. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  /** The next value, "empty" when none is there yet, "closed" when none will come. */
  take(): T | "empty" | "closed" {
    if (this.items.length > 0) return this.items.shift() as T;
    return this.closed ? "closed" : "empty";
  }

  /** Resolves once a value is there or the mailbox is closed (at once if so already). */
  ready(): Promise<void> {
    if (this.items.length > 0 || this.closed) return Promise.resolve();
    return new Promise<void>((resolve) => this.wakers.push(resolve));
  }

  private wake(): void {
    const w = this.wakers;
    this.wakers = [];
    for (const f of w) f();
  }
}
