// Compare: two to four runs side by side.

let app;

export function init(lab) {
  app = lab;
}

export async function show() {}
