// Seed variety: the strength and early-steps fields, and "Variations": the same prompt at several
// fresh seeds with variety on (zturbo.sampling.variety perturbs the prompt's features early).

import { $ } from "./dom.js";

export const VARIATIONS = 4; // images per "Variations" click when the count asks for one
export const VARIATION_STRENGTH = 0.3; // used when the strength field is 0
const MAX_RANDOM_SEED = 2 ** 48;

/** The request's `variety` and `variety_steps` from the fields (bad entries: off, 0.3). */
export function readVariety() {
  const strength = Number($("#variety").value);
  const steps = Number($("#variety-steps").value);
  return {
    variety: Number.isFinite(strength) && strength > 0 ? strength : 0,
    variety_steps: Number.isFinite(steps) && steps > 0 && steps <= 1 ? steps : 0.3,
  };
}

export function writeVariety(settings) {
  $("#variety").value = settings.variety ?? 0;
  $("#variety-steps").value = settings.variety_steps ?? 0.3;
}

/** `count` jobs of `base` at consecutive seeds from a random one, variety on. */
export function variationSettings(base, count) {
  const first = Math.floor(Math.random() * MAX_RANDOM_SEED);
  const variety = base.variety > 0 ? base.variety : VARIATION_STRENGTH;
  return Array.from({ length: count }, (_, i) => ({ ...base, seed: first + i, variety }));
}
