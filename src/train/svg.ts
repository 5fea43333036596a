// The loss curve as a small self-contained SVG: train loss per step, validation loss as dots.

export interface CurvePoint {
  step: number
  loss: number
}

const W = 640
const H = 360
const M = { l: 56, r: 16, t: 28, b: 40 }

export function lossCurveSvg(train: CurvePoint[], valid: CurvePoint[] = [], title = 'loss'): string {
  const pts = [...train, ...valid].filter((p) => Number.isFinite(p.loss))
  const maxStep = Math.max(1, ...pts.map((p) => p.step))
  const minStep = Math.min(maxStep - 1, ...pts.map((p) => p.step))
  const lo = Math.min(...pts.map((p) => p.loss), Infinity)
  const hi = Math.max(...pts.map((p) => p.loss), -Infinity)
  const [y0, y1] = pts.length === 0 ? [0, 1] : lo === hi ? [lo - 0.5, hi + 0.5] : [lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)]
  const x = (s: number) => M.l + ((s - minStep) / (maxStep - minStep)) * (W - M.l - M.r)
  const y = (v: number) => H - M.b - ((v - y0) / (y1 - y0)) * (H - M.t - M.b)
  const f = (v: number) => v.toFixed(1)
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((q) => y0 + q * (y1 - y0))
  const line = train.filter((p) => Number.isFinite(p.loss)).map((p) => `${f(x(p.step))},${f(y(p.loss))}`).join(' ')
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="14">${escape(title)}</text>`,
    ...ticks.map((v) => `<line x1="${M.l}" x2="${W - M.r}" y1="${f(y(v))}" y2="${f(y(v))}" stroke="#eee"/><text x="${M.l - 6}" y="${f(y(v) + 4)}" text-anchor="end">${v.toFixed(3)}</text>`),
    `<line x1="${M.l}" x2="${M.l}" y1="${M.t}" y2="${H - M.b}" stroke="black"/>`,
    `<line x1="${M.l}" x2="${W - M.r}" y1="${H - M.b}" y2="${H - M.b}" stroke="black"/>`,
    `<text x="${M.l}" y="${H - M.b + 16}">${minStep}</text><text x="${W - M.r}" y="${H - M.b + 16}" text-anchor="end">${maxStep}</text>`,
    `<text x="${(W + M.l) / 2}" y="${H - 8}" text-anchor="middle">step</text>`,
    line ? `<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="${line}"/>` : '',
    ...valid.filter((p) => Number.isFinite(p.loss)).map((p) => `<circle cx="${f(x(p.step))}" cy="${f(y(p.loss))}" r="4" fill="#ff7f0e"/>`),
    `<text x="${W - M.r - 150}" y="${M.t + 12}" fill="#1f77b4">— train</text>`,
    valid.length ? `<text x="${W - M.r - 80}" y="${M.t + 12}" fill="#ff7f0e">● valid</text>` : '',
    '</svg>',
    '',
  ]
    .filter(Boolean)
    .join('\n')
}

function escape(s: string): string {
  return s.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]!)
}
