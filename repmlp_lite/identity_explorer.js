// The identity trick to touch: the highlighting of repmlp_lite.explorers.identity_trick_explorer.
//
// Everything shown was computed by the package (conv_to_fc) and written into the page as HTML; this
// script computes nothing about convolutions. It only
//   * switches between the (K, p) panels when a button is pressed, and
//   * highlights what the pointer or the keyboard focus is on:
//       an output pixel  -> its row of W, the input pixels that row reads (each showing its weight),
//                           and the kernel entries used;
//       an input pixel   -> its column of W, the output pixels it feeds (each showing the weight);
//       an entry of W    -> its output pixel, its input pixel and the kernel entry it copies;
//       a kernel entry   -> every entry of W that copies it.
// A panel's W is the grid .itx-w, row by row (W[r, c] is child r * cols + c): a <b> holds a nonzero
// value, an empty <i> is a zero. The kernel's entries are 1, ..., K*K, all different, so an entry of W
// copies the kernel entry with the same value.
// Pixel k of the input (output) image is column (row) k of W. Arrow keys move the focus in a grid.
function repmlpIdentityExplorer(root) {
  "use strict";
  const KINDS = ["out", "inp", "w", "kernel"];
  const MARKS = ["itx-band", "itx-hit", "itx-at"];
  const readout = root.querySelector(".itx-readout");
  let selection = null; // {kind, index}: what is highlighted, kept when the panel changes

  const visiblePanel = () => root.querySelector(".itx-panel:not([hidden])");
  const grid = (panel, kind) => panel.querySelector(".itx-" + kind);
  const cells = (panel, kind) => Array.from(grid(panel, kind).children);
  const nameOf = (cell) => cell.dataset.name;
  const isNonzero = (cell) => cell.tagName === "B";

  function clear(panel) {
    for (const cell of panel.querySelectorAll(".itx-grid > *")) {
      cell.classList.remove(...MARKS);
      if (cell.parentElement.matches(".itx-inp, .itx-out")) cell.textContent = "";
    }
  }

  function mark(cell, how, text) {
    cell.classList.add(how);
    if (text !== undefined) cell.textContent = text;
  }

  // Row r (column null) or column c (row null) of W: marks the line, its nonzeros and the pixels at
  // their other ends (of `pixels`, each showing its weight) and the kernel entries used; returns their
  // number (the kernel's entries are all different, so a line holds each at most once).
  function markLine(panel, r, c, pixels) {
    const w = grid(panel, "w"), cols = Number(w.dataset.cols), entries = cells(panel, "w");
    const taps = new Set(), length = r === null ? entries.length / cols : cols;
    for (let k = 0; k < length; k++) {
      const cell = r === null ? entries[k * cols + c] : entries[r * cols + k];
      mark(cell, "itx-band");
      if (isNonzero(cell)) {
        mark(cell, "itx-hit");
        mark(pixels[k], "itx-hit", cell.textContent);
        taps.add(cell.textContent);
      }
    }
    for (const cell of cells(panel, "kernel")) if (taps.has(cell.textContent)) mark(cell, "itx-hit");
    return taps.size;
  }

  function showOutput(panel, r) {
    const output = cells(panel, "out")[r], used = markLine(panel, r, null, cells(panel, "inp"));
    const [kernelSize] = panel.dataset.setting.split("-").map(Number);
    mark(output, "itx-at");
    return used === 0
      ? `${nameOf(output)} is row ${r} of W: all zero, every kernel tap falls on the padding.`
      : `${nameOf(output)} is row ${r} of W: it adds up ${used} input pixels, each times the weight ` +
          `written on it (${kernelSize * kernelSize - used} of the ${kernelSize * kernelSize} kernel taps ` +
          "fall on the padding).";
  }

  function showInput(panel, c) {
    const input = cells(panel, "inp")[c], fed = markLine(panel, null, c, cells(panel, "out"));
    mark(input, "itx-at");
    return (
      `${nameOf(input)} is column ${c} of W: it feeds ${fed} output pixels, with the weights ` +
      "written on them: the conv's response to a one-hot image there, the kernel turned by 180 degrees " +
      "(less any part outside the output image)."
    );
  }

  function showEntry(panel, k) {
    const cols = Number(grid(panel, "w").dataset.cols), r = Math.floor(k / cols), c = k % cols;
    const entry = cells(panel, "w")[k], output = cells(panel, "out")[r], input = cells(panel, "inp")[c];
    mark(entry, "itx-at");
    mark(output, "itx-at");
    mark(input, "itx-at");
    if (!isNonzero(entry)) {
      return `W[${r}, ${c}] = 0: ${nameOf(input)} is out of the kernel's reach from ${nameOf(output)}.`;
    }
    const kernelEntry = cells(panel, "kernel").find((cell) => cell.textContent === entry.textContent);
    mark(kernelEntry, "itx-hit");
    mark(input, "itx-at", entry.textContent);
    return (
      `W[${r}, ${c}] = ${entry.textContent}, a copy of ${nameOf(kernelEntry)}: ${nameOf(output)} ` +
      `reads ${nameOf(input)} with that weight.`
    );
  }

  function showKernelEntry(panel, k) {
    const kernelEntry = cells(panel, "kernel")[k];
    let copies = 0;
    for (const cell of cells(panel, "w")) {
      if (isNonzero(cell) && cell.textContent === kernelEntry.textContent) {
        mark(cell, "itx-hit");
        copies += 1;
      }
    }
    mark(kernelEntry, "itx-at");
    return `${nameOf(kernelEntry)} = ${kernelEntry.textContent} is copied into ${copies} entries of W.`;
  }

  const SHOW = { out: showOutput, inp: showInput, w: showEntry, kernel: showKernelEntry };

  function show(kind, index) {
    const panel = visiblePanel();
    if (!grid(panel, "w")) {
      readout.textContent = ""; // a setting with no output: the panel shows the package's message
      return;
    }
    if (!(index >= 0 && index < cells(panel, kind).length)) [kind, index] = ["out", Number(panel.dataset.default)];
    clear(panel);
    selection = { kind, index };
    root.dataset.shown = `${kind}-${index}`;
    const sentence = SHOW[kind](panel, index);
    readout.textContent = sentence.charAt(0).toUpperCase() + sentence.slice(1);
  }

  function choose(button) {
    for (const other of button.parentElement.children) other.setAttribute("aria-pressed", String(other === button));
    const chosen = Array.from(root.querySelectorAll(".itx-choice"), (group) =>
      group.querySelector('[aria-pressed="true"]').dataset.value
    ).join("-");
    for (const panel of root.querySelectorAll(".itx-panel")) panel.hidden = panel.dataset.setting !== chosen;
    show(selection ? selection.kind : "out", selection ? selection.index : -1);
  }

  // One tab stop per grid (the "roving" tabindex): Tab enters a grid, the arrow keys move inside it.
  function rove(panel) {
    for (const kind of KINDS) {
      const g = grid(panel, kind);
      if (!g) continue;
      Array.from(g.children).forEach((cell, k) => cell.setAttribute("tabindex", k === 0 ? "0" : "-1"));
    }
  }

  function cellAt(target) {
    const g = target.closest && target.closest(".itx-grid");
    if (!g || !root.contains(g) || target.parentElement !== g) return null;
    const kind = KINDS.find((name) => g.classList.contains("itx-" + name));
    return { kind, index: Array.prototype.indexOf.call(g.children, target), grid: g };
  }

  const STEPS = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };

  root.addEventListener("pointerover", (event) => {
    const at = cellAt(event.target);
    if (at) show(at.kind, at.index);
  });
  root.addEventListener("focusin", (event) => {
    const at = cellAt(event.target);
    if (at) show(at.kind, at.index);
  });
  root.addEventListener("keydown", (event) => {
    const at = cellAt(event.target), step = STEPS[event.key];
    if (!at || !step) return;
    const cols = Number(at.grid.dataset.cols), count = at.grid.children.length;
    const row = Math.floor(at.index / cols) + step[0], col = (at.index % cols) + step[1];
    if (row < 0 || col < 0 || col >= cols || row * cols + col >= count) return;
    event.preventDefault();
    at.grid.children[at.index].setAttribute("tabindex", "-1");
    const next = at.grid.children[row * cols + col];
    next.setAttribute("tabindex", "0");
    next.focus();
  });
  root.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (button && root.contains(button) && button.parentElement.matches(".itx-choice")) choose(button);
  });

  for (const panel of root.querySelectorAll(".itx-panel")) if (grid(panel, "w")) rove(panel);
  show("out", -1);
}
