// The single place that loads the native addon (napi-generated ../index.js).
/* eslint-disable @typescript-eslint/no-require-imports */
import type * as Native from '../index'

function load(): typeof Native {
  try {
    return require('../index.js') as typeof Native
  } catch (e) {
    const err = e as Error
    throw new Error(
      `peft-node: could not load the native addon for ${process.platform}-${process.arch} (Node ${process.version}). ` +
        `Install the matching prebuilt package, or build from source with \`npm run build:native\`. Cause: ${err.message}`,
    )
  }
}

export const native = load()
export type NativeModel = Native.NativeModel
export type NativeTensor = Native.NativeTensor
