// dimlearn browse: a map of a collection of images by their codes, drawn on one canvas.
// Reads data/*.js (written by dimlearn.browse) and sprites/*.jpg; needs no server.
(() => {
  "use strict";

  const DATA = {};
  window.dimBrowseData = (name, value) => { DATA[name] = value; };
  const api = (window.dimBrowse = { ready: false, timing: {}, frames: [] });

  const $ = (selector) => document.querySelector(selector);
  const canvas = $("#map");
  const ctx = canvas.getContext("2d");
  const BACKGROUND = [23, 25, 28];
  const ACCENT = "#ffb000";
  const SELECT = "#4fc3f7";
  const PALETTE = [
    "#4e9af1", "#f28e2b", "#59c159", "#e15759", "#b07aa1", "#a97b5a", "#ff9ddf", "#c9c9c9",
    "#d4d435", "#4dd0e1", "#1f5fbf", "#ffbe7d", "#2f8f2f", "#ff9d9a", "#7b4f9d", "#d7b5a6",
    "#c2185b", "#80807f", "#8c8c1f", "#00897b",
  ];
  const MAX_SPRITES = 6000; // above this many images in view, "auto" draws dots
  const MIN_SPRITE_PX = 10; // below this size on screen, "auto" draws dots
  const SELECTION_GRID = 600; // thumbnails shown in the selection panel

  // -- data ---------------------------------------------------------------------------------
  let META, N, XY, RGB32, SLOT, LABEL = null, NAMES, LOWER = null;
  let NEIGHBOURS = null, DISTANCES = null;
  let CLASSES = [], CLASS32 = null, hidden = null, visible = null;
  let gridN = 1, gridX0 = 0, gridY0 = 0, gridStep = 1, gridStart = null, gridItems = null;

  function load(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`cannot read ${src}`));
      document.head.appendChild(script);
    });
  }

  function decode(text, Type) {
    let bytes;
    if (typeof Uint8Array.fromBase64 === "function") bytes = Uint8Array.fromBase64(text);
    else {
      const chars = atob(text);
      bytes = new Uint8Array(chars.length);
      for (let i = 0; i < chars.length; i++) bytes[i] = chars.charCodeAt(i);
    }
    return new Type(bytes.buffer, bytes.byteOffset, bytes.byteLength / Type.BYTES_PER_ELEMENT);
  }

  const rgba32 = (r, g, b) => ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; // little-endian
  const hex = (colour) => [1, 3, 5].map((i) => parseInt(colour.slice(i, i + 2), 16));
  function classColour(c) {
    if (c < PALETTE.length) return PALETTE[c];
    const hue = (c * 137.508) % 360;
    return `hsl(${hue.toFixed(0)}, 65%, 60%)`;
  }
  function cssToRgb(colour) {
    if (colour.startsWith("#")) return hex(colour);
    const probe = document.createElement("canvas").getContext("2d");
    probe.fillStyle = colour;
    return hex(probe.fillStyle);
  }

  function prepare() {
    META = DATA.meta;
    N = META.n;
    const points = DATA.points;
    XY = decode(points.xy, Float32Array);
    const rgb = decode(points.colour, Uint8Array);
    RGB32 = new Uint32Array(N);
    for (let i = 0; i < N; i++) RGB32[i] = rgba32(rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]);
    SLOT = decode(points.slot, Uint32Array);
    NAMES = DATA.names;
    visible = new Uint8Array(N).fill(1);
    if (points.label) {
      LABEL = decode(points.label, Uint16Array);
      CLASSES = META.classes;
      CLASS32 = new Uint32Array(CLASSES.length);
      hidden = new Uint8Array(CLASSES.length);
      CLASSES.forEach((c, j) => {
        c.colour = classColour(j);
        CLASS32[j] = rgba32(...cssToRgb(c.colour));
      });
    }
    buildGrid();
  }

  function buildGrid() {
    // a uniform grid over the map: the points of a box in O(points in it)
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let i = 0; i < N; i++) {
      const x = XY[2 * i], y = XY[2 * i + 1];
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
    gridN = Math.max(1, Math.min(1024, Math.round(Math.sqrt(N / 4))));
    gridStep = Math.max(x1 - x0, y1 - y0, 1e-9) / gridN * (1 + 1e-6);
    gridX0 = x0;
    gridY0 = y0;
    const cellOf = new Uint32Array(N);
    const counts = new Uint32Array(gridN * gridN + 1);
    for (let i = 0; i < N; i++) {
      const cx = Math.min(gridN - 1, Math.floor((XY[2 * i] - x0) / gridStep));
      const cy = Math.min(gridN - 1, Math.floor((XY[2 * i + 1] - y0) / gridStep));
      cellOf[i] = cy * gridN + cx;
      counts[cellOf[i] + 1]++;
    }
    for (let c = 0; c < gridN * gridN; c++) counts[c + 1] += counts[c];
    gridStart = counts.slice();
    gridItems = new Uint32Array(N);
    const fill = counts.slice();
    for (let i = 0; i < N; i++) gridItems[fill[cellOf[i]]++] = i;
  }

  // the visible points of a box of the map (map units), in increasing order of index
  // when the whole map is in it, else cell by cell
  function pointsIn(x0, y0, x1, y1, each) {
    const clampCell = (v) => Math.max(0, Math.min(gridN - 1, Math.floor(v)));
    const cx0 = clampCell((x0 - gridX0) / gridStep), cx1 = clampCell((x1 - gridX0) / gridStep);
    const cy0 = clampCell((y0 - gridY0) / gridStep), cy1 = clampCell((y1 - gridY0) / gridStep);
    for (let cy = cy0; cy <= cy1; cy++) {
      for (let cx = cx0; cx <= cx1; cx++) {
        const cell = cy * gridN + cx;
        for (let p = gridStart[cell]; p < gridStart[cell + 1]; p++) {
          const i = gridItems[p];
          if (!visible[i]) continue;
          const x = XY[2 * i], y = XY[2 * i + 1];
          if (x >= x0 && x <= x1 && y >= y0 && y <= y1) each(i);
        }
      }
    }
  }

  // -- view ---------------------------------------------------------------------------------
  const view = { cx: 0, cy: 0, scale: 1 };
  let W = 0, H = 0, DPR = 1, fitScale = 1, base = 0.01;
  let imagesMode = "auto"; // auto, on, off
  let hover = -1, current = -1;
  let selection = [], selected = null;
  let lasso = null, flight = null, frameRequested = false;

  const sx = (i) => W / 2 + (XY[2 * i] - view.cx) * view.scale;
  const sy = (i) => H / 2 - (XY[2 * i + 1] - view.cy) * view.scale;
  const toMapX = (x) => view.cx + (x - W / 2) / view.scale;
  const toMapY = (y) => view.cy - (y - H / 2) / view.scale;

  function fitView(box) {
    const [x0, y0, x1, y1] = box;
    const scale = Math.min(W / Math.max(x1 - x0, 1e-9), H / Math.max(y1 - y0, 1e-9));
    return { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale };
  }

  function resize() {
    const rect = canvas.getBoundingClientRect();
    DPR = window.devicePixelRatio || 1;
    W = Math.max(1, rect.width);
    H = Math.max(1, rect.height);
    canvas.width = Math.round(W * DPR);
    canvas.height = Math.round(H * DPR);
    fitScale = fitView(META.view).scale;
  }

  const clampScale = (s) => Math.min(fitScale * 4000, Math.max(fitScale / 8, s));
  const cellSide = () => Math.max(META.sprite.w, META.sprite.h);
  const spritePx = () => Math.min(Math.max(48, cellSide() * 2), base * view.scale);
  const hoverPx = (s) => Math.max(s * 1.6, Math.min(200, Math.max(96, cellSide() * 3)));

  function request() {
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(frame);
    }
  }

  function frame(now) {
    frameRequested = false;
    if (flight) {
      const t = Math.min(1, (now - flight.start) / flight.ms);
      const e = t < 0.5 ? 2 * t * t : 1 - (-2 * t + 2) ** 2 / 2;
      view.cx = flight.from.cx + (flight.to.cx - flight.from.cx) * e;
      view.cy = flight.from.cy + (flight.to.cy - flight.from.cy) * e;
      view.scale = Math.exp(Math.log(flight.from.scale) * (1 - e) + Math.log(flight.to.scale) * e);
      if (t >= 1) {
        const done = flight.done;
        flight = null;
        zoomingUntil = 0;
        if (done) done();
      } else {
        zooming(100);
        request();
      }
    }
    draw();
  }

  function flyTo(target, done) {
    flight = { from: { ...view }, to: target, start: performance.now(), ms: 650, done };
    request();
  }

  // -- sprite sheets, loaded when first drawn -----------------------------------------------
  const sheets = [];
  function sheet(s) {
    let entry = sheets[s];
    if (!entry) {
      const image = new Image();
      entry = sheets[s] = { image, ready: false };
      image.onload = () => {
        // an ImageBitmap keeps the sheet decoded: an <img> may be decoded again at each
        // draw once several sheets outgrow the browser's cache of decoded images
        const ready = (bitmap) => {
          if (bitmap) entry.image = bitmap;
          entry.ready = true;
          layerVersion++;
          request();
        };
        if (window.createImageBitmap) createImageBitmap(image).then(ready, () => ready(null));
        else ready(null);
      };
      image.src = META.sprite.sheets[s].file;
    }
    return entry.ready ? entry.image : null;
  }
  function spriteOf(i) {
    const sp = META.sprite, slot = SLOT[i];
    const s = Math.floor(slot / sp.per_sheet), cell = slot % sp.per_sheet;
    return { s, x: (cell % sp.cols) * sp.w, y: Math.floor(cell / sp.cols) * sp.h };
  }
  function drawSprite(i, x, y, side, border) {
    const sp = META.sprite, at = spriteOf(i);
    const k = side / Math.max(sp.w, sp.h), w = sp.w * k, h = sp.h * k;
    if (border) {
      const b = side < 24 ? 1 : 2;
      ctx.fillStyle = border;
      ctx.fillRect(x - w / 2 - b, y - h / 2 - b, w + 2 * b, h + 2 * b);
    }
    const image = sheet(at.s);
    if (image) {
      ctx.imageSmoothingEnabled = k < 1.999;
      ctx.drawImage(image, at.x, at.y, sp.w, sp.h, x - w / 2, y - h / 2, w, h);
    } else {
      const c = RGB32[i];
      ctx.fillStyle = `rgb(${c & 255},${(c >> 8) & 255},${(c >> 16) & 255})`;
      ctx.fillRect(x - w / 2, y - h / 2, w, h);
    }
  }

  // the images of a list on a 2-D context g, shifted by (ox, oy) CSS px: their class frames
  // first, one path per class, then the images, sheet after sheet
  function drawSprites(g, list, side, ox, oy) {
    const sp = META.sprite, k = side / Math.max(sp.w, sp.h), w = sp.w * k, h = sp.h * k;
    if (LABEL) {
      const b = side < 24 ? 1 : 2, byClass = new Map();
      for (const i of list) {
        const c = LABEL[i];
        if (!byClass.has(c)) byClass.set(c, []);
        byClass.get(c).push(i);
      }
      for (const [c, members] of byClass) {
        g.beginPath();
        for (const i of members) {
          g.rect(sx(i) + ox - w / 2 - b, sy(i) + oy - h / 2 - b, w + 2 * b, h + 2 * b);
        }
        g.fillStyle = CLASSES[c].colour;
        g.fill();
      }
    }
    list.sort((a, b) => SLOT[a] - SLOT[b]);
    g.imageSmoothingEnabled = k < 1.999;
    const perSheet = sp.per_sheet, cols = sp.cols;
    for (const i of list) {
      const slot = SLOT[i], cell = slot % perSheet;
      const x = sx(i) + ox - w / 2, y = sy(i) + oy - h / 2;
      const image = sheet(Math.floor(slot / perSheet));
      if (image) {
        g.drawImage(image, (cell % cols) * sp.w, Math.floor(cell / cols) * sp.h, sp.w, sp.h, x, y, w, h);
      } else {
        const c = RGB32[i];
        g.fillStyle = `rgb(${c & 255},${(c >> 8) & 255},${(c >> 16) & 255})`;
        g.fillRect(x, y, w, h);
      }
    }
  }

  // The images are drawn once onto a layer a quarter of the view larger on every side, and
  // panning only moves that layer: drawn again when the zoom, the size, the classes shown or
  // the sheets loaded change, or when a pan reaches its edge. While a zoom goes on (wheel,
  // flight), the layer is scaled, and drawn again once it stops.
  const layer = { canvas: document.createElement("canvas"), key: "", scale: 0, cx: 0, cy: 0 };
  let layerVersion = 0; // counts changes to what the layer shows
  let zoomingUntil = 0;
  function drawLayer(side) {
    const base = `${W} ${H} ${DPR} ${layerVersion}`;
    const f = view.scale / layer.scale;
    if (layer.key === base && f !== 1 && f > 0.5 && f < 2 && performance.now() < zoomingUntil) {
      const x0 = W / 2 + (layer.cx - view.cx) * view.scale - (layer.mx + W / 2) * f;
      const y0 = H / 2 - (layer.cy - view.cy) * view.scale - (layer.my + H / 2) * f;
      const c = layer.canvas;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(c, x0, y0, (c.width / DPR) * f, (c.height / DPR) * f);
      return;
    }
    const mx = Math.ceil(W / 4), my = Math.ceil(H / 4);
    const dx = (layer.cx - view.cx) * view.scale, dy = (view.cy - layer.cy) * view.scale;
    if (layer.key !== base || f !== 1 || Math.abs(dx) > mx || Math.abs(dy) > my) {
      const c = layer.canvas, g = c.getContext("2d");
      c.width = Math.round((W + 2 * mx) * DPR);
      c.height = Math.round((H + 2 * my) * DPR);
      g.setTransform(DPR, 0, 0, DPR, 0, 0);
      g.fillStyle = `rgb(${BACKGROUND})`;
      g.fillRect(0, 0, W + 2 * mx, H + 2 * my);
      const list = [];
      const r = side / 2 / view.scale;
      pointsIn(toMapX(-mx) - r, toMapY(H + my) - r, toMapX(W + mx) + r, toMapY(-my) + r,
        (i) => list.push(i));
      drawSprites(g, list, side, mx, my);
      Object.assign(layer, { key: base, scale: view.scale, cx: view.cx, cy: view.cy, mx, my });
      return drawLayer(side);
    }
    const px = (v) => Math.round(v * DPR) / DPR; // whole device pixels: no resampling
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(layer.canvas, px(dx - mx), px(dy - my), layer.canvas.width / DPR, layer.canvas.height / DPR);
  }

  function zooming(ms) {
    zoomingUntil = performance.now() + ms;
    clearTimeout(zooming.timer);
    zooming.timer = setTimeout(request, ms + 20); // then draw the images anew
  }

  // -- drawing ------------------------------------------------------------------------------
  let pixels = null, pixels32 = null;
  const BACK32 = rgba32(...BACKGROUND);

  function inView(margin) {
    const list = [];
    pointsIn(toMapX(-margin), toMapY(H + margin), toMapX(W + margin), toMapY(-margin),
      (i) => list.push(i));
    return list;
  }

  function colourOf(i) {
    return LABEL ? CLASS32[LABEL[i]] : RGB32[i];
  }

  // every visible point as a square of its colour, written into the pixels; the number
  // of points on the canvas
  function drawDots(size) {
    const w = canvas.width, h = canvas.height;
    if (!pixels || pixels.width !== w || pixels.height !== h) {
      pixels = ctx.createImageData(w, h);
      pixels32 = new Uint32Array(pixels.data.buffer);
    }
    pixels32.fill(BACK32);
    const d = Math.max(1, Math.round(size * DPR)), half = d / 2;
    const ox = (W / 2 - view.cx * view.scale) * DPR - half;
    const oy = (H / 2 + view.cy * view.scale) * DPR - half;
    const k = view.scale * DPR, colours = LABEL ? null : RGB32;
    let count = 0;
    for (let i = 0; i < N; i++) {
      if (!visible[i]) continue;
      const x = Math.round(ox + XY[2 * i] * k), y = Math.round(oy - XY[2 * i + 1] * k);
      if (x < 0 || y < 0 || x + d > w || y + d > h) continue;
      const c = colours ? colours[i] : CLASS32[LABEL[i]];
      count++;
      for (let r = 0, at = y * w + x; r < d; r++, at += w) {
        for (let q = at; q < at + d; q++) pixels32[q] = c;
      }
    }
    ctx.putImageData(pixels, 0, 0);
    return count;
  }

  function ring(i, side, colour, width) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    const half = side / 2 + width;
    ctx.strokeRect(sx(i) - half, sy(i) - half, 2 * half, 2 * half);
  }

  function draw() {
    if (!META) return;
    const started = performance.now();
    const side = spritePx();
    const wanted = imagesMode === "on" || (imagesMode === "auto" && side >= MIN_SPRITE_PX);
    const list = wanted ? inView(side) : null;
    const images = wanted && (imagesMode === "on" || list.length <= MAX_SPRITES);
    let count = images ? list.length : 0;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    const dot = Math.max(2, Math.min(6, Math.round(side * 0.45)));
    if (images) {
      ctx.fillStyle = `rgb(${BACKGROUND})`;
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.setTransform(DPR, 0, 0, DPR, 0, 0);
      drawLayer(side);
    } else {
      count = drawDots(dot);
      ctx.setTransform(DPR, 0, 0, DPR, 0, 0);
    }
    const mark = images ? side : dot;
    if (selection.length) {
      ctx.beginPath();
      const width = mark < 24 ? 1 : 2, half = mark / 2 + width;
      for (const i of selection) {
        if (visible[i]) ctx.rect(sx(i) - half, sy(i) - half, 2 * half, 2 * half);
      }
      ctx.strokeStyle = SELECT;
      ctx.lineWidth = width;
      ctx.stroke();
    }
    if (current >= 0) {
      if (NEIGHBOURS) {
        for (const j of neighboursOf(current)) if (visible[j]) ring(j, mark, "#ffffff", 1.5);
      }
      ring(current, mark, ACCENT, 3);
    }
    if (hover >= 0 && visible[hover]) {
      const big = hoverPx(side), x = sx(hover), y = sy(hover);
      ctx.shadowColor = "#000c";
      ctx.shadowBlur = 14;
      drawSprite(hover, x, y, big, "#ffffff");
      ctx.shadowBlur = 0;
      showTip(hover, x, y + big / 2 + 4);
    } else $("#tip").hidden = true;
    if (lasso && lasso.length > 1) {
      ctx.beginPath();
      ctx.moveTo(lasso[0][0], lasso[0][1]);
      for (const [x, y] of lasso) ctx.lineTo(x, y);
      ctx.closePath();
      ctx.fillStyle = "#4fc3f722";
      ctx.fill();
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = SELECT;
      ctx.lineWidth = 1.5;
      ctx.stroke();
      ctx.setLineDash([]);
    }
    const ms = performance.now() - started;
    api.frames.push(ms);
    if (api.frames.length > 2000) api.frames.splice(0, 1000);
    api.lastFrame = { ms, images, inView: count, sprite: side };
    const zoom = view.scale / fitScale;
    $("#status").textContent =
      `${count.toLocaleString()} in view · zoom ${zoom < 10 ? zoom.toFixed(1) : zoom.toFixed(0)}x`;
  }

  function showTip(i, x, y) {
    const tip = $("#tip");
    tip.textContent = NAMES[i] + (LABEL ? `  ·  ${CLASSES[LABEL[i]].name}` : "");
    tip.hidden = false;
    const w = tip.offsetWidth;
    tip.style.left = `${Math.max(4, Math.min(W - w - 4, x - w / 2))}px`;
    tip.style.top = `${Math.min(H - 24, y)}px`;
  }

  // -- picking ------------------------------------------------------------------------------
  function pick(x, y) {
    const side = spritePx();
    const radius = Math.max(6, side / 2);
    const r = radius / view.scale, mx = toMapX(x), my = toMapY(y);
    let best = -1, bestD = Infinity;
    pointsIn(mx - r, my - r, mx + r, my + r, (i) => {
      const dx = sx(i) - x, dy = sy(i) - y, d = dx * dx + dy * dy;
      if (d <= radius * radius * 2 && d < bestD) { best = i; bestD = d; }
    });
    return best;
  }

  function insidePolygon(px, py, poly) {
    let inside = false;
    for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
      const [xa, ya] = poly[a], [xb, yb] = poly[b];
      if ((ya > py) !== (yb > py) && px < ((xb - xa) * (py - ya)) / (yb - ya) + xa) inside = !inside;
    }
    return inside;
  }

  function selectPolygon(poly) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const [x, y] of poly) {
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
    }
    const found = [];
    pointsIn(toMapX(x0), toMapY(y1), toMapX(x1), toMapY(y0), (i) => {
      if (insidePolygon(sx(i), sy(i), poly)) found.push(i);
    });
    found.sort((a, b) => a - b);
    setSelection(found);
  }

  // -- side panel ---------------------------------------------------------------------------
  function spriteBox(i, size) {
    const sp = META.sprite, at = spriteOf(i), sheetInfo = META.sprite.sheets[at.s];
    const k = size / Math.max(sp.w, sp.h);
    const box = document.createElement("div");
    box.className = "sprite" + (k >= 2 ? " pixelated" : "");
    Object.assign(box.style, {
      width: `${sp.w * k}px`,
      height: `${sp.h * k}px`,
      backgroundImage: `url("${sheetInfo.file}")`,
      backgroundSize: `${sheetInfo.width * k}px ${sheetInfo.height * k}px`,
      backgroundPosition: `${-at.x * k}px ${-at.y * k}px`,
    });
    box.dataset.index = i;
    return box;
  }

  function neighboursOf(i) {
    return NEIGHBOURS.subarray(i * META.k, (i + 1) * META.k);
  }

  function updateSide() {
    $("#side").hidden = $("#detail").hidden && $("#selection").hidden;
    requestAnimationFrame(() => { resize(); request(); });
  }

  function fileLink(i) {
    if (!META.link_base) return null;
    return META.link_base + NAMES[i].split("/").map(encodeURIComponent).join("/");
  }

  function open(i) {
    current = i;
    const detail = $("#detail");
    detail.hidden = false;
    $("#d-name").textContent = NAMES[i];
    const image = $("#d-image");
    const big = spriteBox(i, Math.min(320, Math.max(192, cellSide() * 3)));
    big.id = "d-image";
    image.replaceWith(big);
    const about = $("#d-about");
    about.textContent = "";
    if (LABEL) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.style.background = CLASSES[LABEL[i]].colour;
      chip.textContent = CLASSES[LABEL[i]].name;
      about.append(chip, " ");
    }
    const link = fileLink(i);
    if (link) {
      const a = document.createElement("a");
      a.href = link;
      a.target = "_blank";
      a.textContent = "open the file";
      about.append(a);
    }
    about.append(` · image ${i + 1} of ${N.toLocaleString()}`);
    showNeighbours(i);
    updateSide();
    request();
  }

  function showNeighbours(i) {
    const list = $("#d-neighbours");
    list.textContent = "";
    $("#d-title").textContent = `${META.k} nearest images (${META.metric} distance of the codes)`;
    if (!NEIGHBOURS) {
      list.textContent = "Loading the neighbours\u2026";
      return;
    }
    const ids = neighboursOf(i), dist = DISTANCES.subarray(i * META.k, (i + 1) * META.k);
    ids.forEach((j, r) => {
      const item = document.createElement("li");
      item.dataset.index = j;
      item.title = NAMES[j];
      const box = spriteBox(j, 88);
      if (LABEL) box.style.borderColor = CLASSES[LABEL[j]].colour;
      const name = document.createElement("span");
      name.className = "nb-name";
      name.textContent = NAMES[j];
      const d = document.createElement("span");
      d.className = "nb-dist";
      d.textContent = dist[r].toFixed(4);
      item.append(box, name, d);
      item.addEventListener("click", () => goTo(j));
      list.append(item);
    });
  }

  function setSelection(list) {
    selection = list;
    selected = list.length ? new Set(list) : null;
    const panel = $("#selection");
    panel.hidden = !list.length;
    $("#s-count").textContent = `${list.length.toLocaleString()} selected`;
    const grid = $("#s-grid");
    grid.textContent = "";
    for (const i of list.slice(0, SELECTION_GRID)) {
      const box = spriteBox(i, 48);
      box.title = NAMES[i];
      box.addEventListener("click", () => goTo(i));
      grid.append(box);
    }
    $("#s-more").textContent = list.length > SELECTION_GRID
      ? `The first ${SELECTION_GRID} are shown; copy or download the names of all ${list.length.toLocaleString()}.`
      : "";
    updateSide();
    request();
  }

  const selectionText = () => selection.map((i) => NAMES[i]).join("\n") + (selection.length ? "\n" : "");

  function copyNames() {
    const text = selectionText(), button = $("#s-copy");
    const done = () => {
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy names"; }, 1500);
    };
    const fallback = () => {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
      done();
    };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, fallback);
    else fallback();
  }

  function downloadNames() {
    const url = URL.createObjectURL(new Blob([selectionText()], { type: "text/plain" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = "names.txt";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function goTo(i, zoomIn = true) {
    if (LABEL && hidden[LABEL[i]]) toggleClass(LABEL[i]);
    const scale = zoomIn ? clampScale(Math.max(view.scale, Math.min(64, cellSide() * 1.5) / base)) : view.scale;
    open(i);
    flyTo({ cx: XY[2 * i], cy: XY[2 * i + 1], scale });
  }

  // -- search -------------------------------------------------------------------------------
  let matches = [], active = 0;
  function search(text) {
    const query = text.trim().toLowerCase();
    const list = $("#matches");
    matches = [];
    active = 0;
    list.textContent = "";
    if (!query) { list.hidden = true; return; }
    if (!LOWER) LOWER = NAMES.map((name) => name.toLowerCase());
    const starts = [], within = [];
    for (let i = 0; i < N && starts.length < 50; i++) {
      const name = LOWER[i], at = name.indexOf(query);
      if (at < 0) continue;
      const base = name.slice(name.lastIndexOf("/") + 1);
      if (name === query || base === query) starts.unshift(i);
      else if (at === 0 || base.startsWith(query)) starts.push(i);
      else if (within.length < 50) within.push(i);
    }
    matches = starts.concat(within).slice(0, 50);
    for (const [r, i] of matches.entries()) {
      const item = document.createElement("li");
      item.textContent = NAMES[i];
      item.dataset.index = i;
      item.className = r === 0 ? "active" : "";
      item.addEventListener("mousedown", (event) => { event.preventDefault(); choose(r); });
      list.append(item);
    }
    if (!matches.length) {
      const none = document.createElement("li");
      none.className = "none";
      none.textContent = "No image has this in its name";
      list.append(none);
    }
    list.hidden = false;
  }
  function choose(r) {
    if (!matches.length) return;
    const i = matches[r];
    $("#matches").hidden = true;
    $("#search").value = NAMES[i];
    $("#search").blur();
    goTo(i);
  }
  function highlight(r) {
    const items = $("#matches").children;
    if (!matches.length) return;
    active = (r + matches.length) % matches.length;
    for (const [n, item] of [...items].entries()) item.classList.toggle("active", n === active);
    items[active].scrollIntoView({ block: "nearest" });
  }

  // -- legend -------------------------------------------------------------------------------
  function updateVisible() {
    for (let i = 0; i < N; i++) visible[i] = hidden[LABEL[i]] ? 0 : 1;
    if (hover >= 0 && !visible[hover]) hover = -1;
    layerVersion++;
    request();
  }
  function toggleClass(c) {
    hidden[c] = hidden[c] ? 0 : 1;
    $("#legend").querySelectorAll("li")[c].classList.toggle("off", !!hidden[c]);
    updateVisible();
  }
  function showAll(on) {
    hidden.fill(on ? 0 : 1);
    $("#legend").querySelectorAll("li").forEach((li) => li.classList.toggle("off", !on));
    updateVisible();
  }
  function buildLegend() {
    const legend = $("#legend");
    legend.hidden = false;
    const head = document.createElement("div");
    head.className = "head";
    const what = document.createElement("span");
    what.textContent = "Click a class to hide it";
    const all = document.createElement("button");
    all.textContent = "all";
    all.addEventListener("click", () => showAll(true));
    const none = document.createElement("button");
    none.textContent = "none";
    none.addEventListener("click", () => showAll(false));
    head.append(what, all, none);
    const list = document.createElement("ul");
    CLASSES.forEach((c, j) => {
      const item = document.createElement("li");
      item.title = `Show or hide ${c.name}`;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = c.colour;
      swatch.style.borderColor = c.colour;
      const name = document.createElement("span");
      name.textContent = c.name;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = c.count.toLocaleString();
      item.append(swatch, name, count);
      item.addEventListener("click", () => toggleClass(j));
      list.append(item);
    });
    legend.append(head, list);
  }

  // -- training curves ----------------------------------------------------------------------
  const TERMS = [
    ["train_loss", "total (weighted sum)", null],
    ["valid_loss", "total, held out", null],
    ["train_global", "global MI", "alpha"],
    ["train_local", "local MI", "beta"],
    ["train_prior", "prior", "gamma"],
    ["train_local_local", "local-local MI", "delta"],
  ];
  function buildCurves() {
    const history = META.history;
    if (!history.length) return;
    $("#curves-button").hidden = false;
    const model = META.model || {};
    $("#curves-note").textContent =
      `${history.length} epoch${history.length > 1 ? "s" : ""}` +
      (model.latent_dim ? ` · ${model.latent_dim}-d codes` : "") +
      (model.precision ? ` · ${model.precision}` : "") +
      (model.device ? ` on ${model.device}` : "") + " · loss in nats, lower is better";
    const charts = $("#charts");
    for (const [key, title, weight] of TERMS) {
      const points = history.filter((e) => key in e).map((e) => [e.epoch, e[key]]);
      if (!points.length) continue;
      const figure = document.createElement("figure");
      const caption = document.createElement("figcaption");
      const w = model.weights && weight ? model.weights[weight] : null;
      caption.textContent = title + (w !== null && w !== undefined ? ` (weight ${weight}=${w})` : "");
      const chart = document.createElement("canvas");
      figure.append(caption, chart);
      charts.append(figure);
      lineChart(chart, points, history.length);
    }
  }
  function lineChart(chart, points, epochs) {
    const w = 230, h = 130, dpr = window.devicePixelRatio || 1;
    chart.width = w * dpr;
    chart.height = h * dpr;
    chart.style.width = `${w}px`;
    chart.style.height = `${h}px`;
    const g = chart.getContext("2d");
    g.scale(dpr, dpr);
    const left = 48, right = 8, top = 8, bottom = 22;
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const x0 = Math.min(0.6, ...xs), x1 = Math.max(epochs, ...xs) + 0.4;
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.08;
    y0 -= pad; y1 += pad;
    const X = (x) => left + ((x - x0) / (x1 - x0)) * (w - left - right);
    const Y = (y) => top + (1 - (y - y0) / (y1 - y0)) * (h - top - bottom);
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#9aa0a6";
    g.strokeStyle = "#3a3f45";
    g.lineWidth = 1;
    g.strokeRect(left, top, w - left - right, h - top - bottom);
    g.textAlign = "right";
    for (const y of [y1 - pad, y0 + pad]) g.fillText(y.toPrecision(4), left - 4, Y(y) + 4);
    g.textAlign = "center";
    const step = Math.max(1, Math.ceil(epochs / 6));
    for (let e = 1; e <= Math.ceil(x1 - 0.4); e += step) g.fillText(String(e), X(e), h - 6);
    g.strokeStyle = ACCENT;
    g.lineWidth = 1.5;
    g.beginPath();
    points.forEach(([x, y], n) => (n ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y))));
    g.stroke();
    g.fillStyle = ACCENT;
    for (const [x, y] of points) g.fillRect(X(x) - 2, Y(y) - 2, 4, 4);
  }

  // -- input --------------------------------------------------------------------------------
  let mode = "pan", press = null;

  function setMode(m) {
    mode = m;
    $("#mode-pan").classList.toggle("on", m === "pan");
    $("#mode-lasso").classList.toggle("on", m === "lasso");
    canvas.classList.toggle("lasso", m === "lasso");
  }

  function local(event) {
    const rect = canvas.getBoundingClientRect();
    return [event.clientX - rect.left, event.clientY - rect.top];
  }

  function zoomAt(x, y, factor) {
    const mx = toMapX(x), my = toMapY(y);
    view.scale = clampScale(view.scale * factor);
    view.cx = mx - (x - W / 2) / view.scale;
    view.cy = my + (y - H / 2) / view.scale;
    flight = null;
    zooming(150);
    request();
  }

  function listen() {
    canvas.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      const [x, y] = local(event);
      canvas.setPointerCapture(event.pointerId);
      flight = null;
      press = { x, y, last: [x, y], lasso: mode === "lasso" || event.shiftKey, moved: false };
      if (press.lasso) lasso = [[x, y]];
      else canvas.classList.add("dragging");
    });
    canvas.addEventListener("pointermove", (event) => {
      const [x, y] = local(event);
      if (press) {
        if (Math.hypot(x - press.x, y - press.y) > 3) press.moved = true;
        if (press.lasso) {
          const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
          for (const e of moves.length ? moves : [event]) lasso.push(local(e));
        }
        else if (press.moved) {
          view.cx -= (x - press.last[0]) / view.scale;
          view.cy += (y - press.last[1]) / view.scale;
        }
        press.last = [x, y];
        hover = -1;
        request();
        return;
      }
      const found = pick(x, y);
      canvas.classList.toggle("over", found >= 0 && mode === "pan");
      if (found !== hover) {
        hover = found;
        request();
      }
    });
    const release = (event) => {
      if (!press) return;
      const [x, y] = local(event);
      canvas.classList.remove("dragging");
      if (press.lasso && press.moved && lasso.length > 2) {
        const rect = canvas.getBoundingClientRect(); // for tests: the polygon, page coordinates
        api.lastLasso = lasso.map(([lx, ly]) => [rect.left + lx, rect.top + ly]);
        selectPolygon(lasso);
      }
      else if (!press.moved) {
        const found = pick(x, y);
        if (found >= 0) open(found);
      }
      press = null;
      lasso = null;
      request();
    };
    canvas.addEventListener("pointerup", release);
    canvas.addEventListener("pointercancel", () => { press = null; lasso = null; request(); });
    canvas.addEventListener("pointerleave", () => {
      if (!press && hover >= 0) { hover = -1; request(); }
    });
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      const [x, y] = local(event);
      const unit = event.deltaMode === 1 ? 33 : event.deltaMode === 2 ? 400 : 1;
      zoomAt(x, y, Math.exp(-event.deltaY * unit * 0.0015));
    }, { passive: false });

    $("#mode-pan").addEventListener("click", () => setMode("pan"));
    $("#mode-lasso").addEventListener("click", () => setMode("lasso"));
    $("#images").addEventListener("click", () => {
      imagesMode = { auto: "on", on: "off", off: "auto" }[imagesMode];
      $("#images").textContent = `Images: ${imagesMode}`;
      request();
    });
    $("#fit").addEventListener("click", () => flyTo(fitView(META.view)));
    $("#zoom-in").addEventListener("click", () => zoomAt(W / 2, H / 2, 2));
    $("#zoom-out").addEventListener("click", () => zoomAt(W / 2, H / 2, 0.5));
    $("#curves-button").addEventListener("click", () => {
      $("#curves").hidden = !$("#curves").hidden;
      $("#curves-button").classList.toggle("on", !$("#curves").hidden);
    });
    document.querySelectorAll("[data-close]").forEach((button) => {
      button.addEventListener("click", () => close(button.dataset.close));
    });
    $("#s-copy").addEventListener("click", copyNames);
    $("#s-download").addEventListener("click", downloadNames);

    const input = $("#search");
    input.addEventListener("input", () => search(input.value));
    input.addEventListener("focus", () => { if (input.value) search(input.value); });
    input.addEventListener("blur", () => { $("#matches").hidden = true; });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); choose(active); }
      else if (event.key === "ArrowDown") { event.preventDefault(); highlight(active + 1); }
      else if (event.key === "ArrowUp") { event.preventDefault(); highlight(active - 1); }
      else if (event.key === "Escape") { $("#matches").hidden = true; input.blur(); }
    });
    document.addEventListener("keydown", (event) => {
      if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key === "/") { event.preventDefault(); input.focus(); input.select(); }
      else if (event.key === "+" || event.key === "=") zoomAt(W / 2, H / 2, 1.5);
      else if (event.key === "-") zoomAt(W / 2, H / 2, 1 / 1.5);
      else if (event.key === "0") flyTo(fitView(META.view));
      else if (event.key === "Escape") { close("detail"); close("selection"); }
    });
    new ResizeObserver(() => { resize(); request(); }).observe($("#stage"));
  }

  function close(what) {
    if (what === "curves") {
      $("#curves").hidden = true;
      $("#curves-button").classList.remove("on");
      return;
    }
    if (what === "detail") { $("#detail").hidden = true; current = -1; }
    if (what === "selection") setSelection([]);
    updateSide();
    request();
  }

  // -- start --------------------------------------------------------------------------------
  async function start() {
    try {
      await Promise.all(["data/meta.js", "data/points.js", "data/names.js"].map(load));
      if (!DATA.meta || !DATA.points || !DATA.names) throw new Error("the data files are incomplete");
    } catch (error) {
      const box = $("#loading");
      box.classList.add("error");
      box.textContent = `This page shows a folder written by dimlearn browse, but ${error.message}: ` +
        "keep index.html with the data and sprites folders beside it.";
      return;
    }
    prepare();
    api.timing.data = performance.now();
    document.title = META.title;
    $("#title").textContent = META.title;
    $("#subtitle").textContent = `${META.map} · ${META.k} nearest by ${META.metric} distance`;
    if (LABEL) buildLegend();
    buildCurves();
    resize();
    base = Math.sqrt(((META.view[2] - META.view[0]) * (META.view[3] - META.view[1])) / N) * 0.9;
    Object.assign(view, fitView(META.view));
    listen();
    draw();
    $("#loading").hidden = true;
    api.timing.firstDraw = performance.now();
    api.ready = true;
    load("data/neighbours.js").then(() => {
      NEIGHBOURS = decode(DATA.neighbours.ids, Int32Array);
      DISTANCES = decode(DATA.neighbours.dist, Float32Array);
      api.timing.neighbours = performance.now();
      if (current >= 0) showNeighbours(current);
      request();
    });
  }

  Object.assign(api, {
    // for tests and benchmarks: positions on the page, and what the page holds
    pagePositions() {
      const rect = canvas.getBoundingClientRect(), out = [];
      for (let i = 0; i < N; i++) out.push(rect.left + sx(i), rect.top + sy(i));
      return out;
    },
    view: () => ({ ...view, fitScale, width: W, height: H }),
    setView(cx, cy, zoom) {
      Object.assign(view, { cx, cy, scale: clampScale(fitScale * zoom) });
      flight = null;
      zoomingUntil = 0;
      draw();
    },
    centreOn(i, zoom) {
      api.setView(XY[2 * i], XY[2 * i + 1], zoom);
    },
    draw,
    neighboursLoaded: () => NEIGHBOURS !== null,
    sheetsLoaded: () => sheets.filter((s) => s && s.ready).length,
    selection: () => selection.slice(),
    open: (i) => goTo(i),
  });

  start();
})();
