// How the console writes times, durations and money.

/** Unix seconds as the reader's local date and time. */
export function when(unix) { return unix ? new Date(unix * 1000).toLocaleString() : ""; }

/** A duration in seconds, short: "850 ms", "3.2 s". */
export function seconds(s) { return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(1)} s`; }

/** Dollars, to `digits` decimals; "" for null (no figure yet). */
export function money(usd, digits = 5) { return usd === null || usd === undefined ? "" : `$${Number(usd).toFixed(digits)}`; }

/** A share (0..1) as a percentage; "–" for null. */
export function percent(share) { return share === null || share === undefined ? "–" : `${(share * 100).toFixed(1)}%`; }

/** ["a", "a", "b"] -> "a ×2, b". */
export function tally(names) {
  const counts = new Map();
  for (const name of names) counts.set(name, (counts.get(name) || 0) + 1);
  return [...counts].map(([name, n]) => (n > 1 ? `${name} ×${n}` : name)).join(", ");
}
