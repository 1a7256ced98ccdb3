"""The live view's page: one self-contained HTML document (no outside scripts or fonts; the lab
may run where there is no internet). It draws the topology picture of `hvsim draw`, a port table
fed by the WebSocket (rates, counters, drops by reason), the MAC table of a chosen switch, the
event log, and the actions: link down/up per port, capture download, trace a frame."""
from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>hvsim live: {{LAB}}</title>
<style>
 body{font:13px system-ui,sans-serif;margin:0;color:#222}
 header{background:#234;color:#fff;padding:6px 12px}
 header b{font-size:15px} #status{float:right}
 main{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:10px;padding:10px}
 section{border:1px solid #ccc;border-radius:4px;padding:6px;overflow:auto}
 h2{font-size:13px;margin:0 0 6px}
 table{border-collapse:collapse;width:100%} td,th{padding:2px 6px;border-bottom:1px solid #eee;
 text-align:right;white-space:nowrap} td:first-child,th:first-child,td.drops{text-align:left}
 tr.down td{color:#a00} td.drops{color:#a00;white-space:normal}
 #topo svg{max-width:100%;height:auto} text.live{font:9px monospace;fill:#075}
 text.live.bad{fill:#c00;font-weight:bold} g.down polygon,g.down path,g.down ellipse{stroke:#c00}
 #events{height:200px;font-family:monospace;font-size:12px}
 #events div.drops{color:#a00} #events div.link{color:#06a}
 pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;font-size:12px}
 button{font-size:12px}
</style></head><body>
<header><b>hvsim live</b> &mdash; lab <span id="lab">{{LAB}}</span>
 <span id="status">connecting&hellip;</span></header>
<main>
 <div>
  <section id="picture"><h2>Topology</h2><div id="topo">loading&hellip;</div></section>
  <section><h2>Ports</h2><table id="ports"><thead><tr><th>port</th><th>link</th>
   <th>rx/s</th><th>tx/s</th><th>rx</th><th>tx</th><th>drops</th><th></th></tr></thead>
   <tbody></tbody></table></section>
 </div>
 <div>
  <section><h2>MAC table <select id="switch"></select></h2>
   <table id="mac"><thead><tr><th>VLAN</th><th>MAC</th><th>port</th><th>age s</th></tr>
   </thead><tbody></tbody></table></section>
  <section><h2>CDP/LLDP neighbours</h2>
   <table id="neighbors"><thead><tr><th>device</th><th>port</th><th>discovery</th>
   <th>neighbour</th><th>remote port</th><th>VLAN</th><th>MTU</th><th>hold s</th></tr>
   </thead><tbody></tbody></table></section>
  <section><h2>Events</h2><div id="events"></div></section>
  <section><h2>Trace a frame</h2>
   from <input id="trace-from" size="10" placeholder="vm1">
   frame <input id="trace-frame" size="40" placeholder="{eth: {dst: ff:ff:ff:ff:ff:ff}}">
   <button id="trace-go">trace</button><pre id="trace-out"></pre></section>
 </div>
</main>
<script>
"use strict";
const ports = {};   // path -> {info, row}
const byName = {};
function el(tag, attrs, text){const e=document.createElement(tag);
 for(const k in attrs||{}) e.setAttribute(k, attrs[k]); if(text!==undefined) e.textContent=text;
 return e;}
function dropsText(d){return Object.entries(d||{}).map(([r,n])=>r+" "+n).join(", ");}
async function api(path, body){
 const opts = body===undefined ? {} : {method:"POST", headers:{"Content-Type":"application/json"},
  body: JSON.stringify(body)};
 const r = await fetch(path, opts);
 const data = await r.json().catch(()=>({error: r.statusText}));
 if(!r.ok) throw new Error(data.error || r.statusText);
 return data;
}
function setLink(p, up){
 p.info.link_up = up; p.row.classList.toggle("down", !up);
 const n = svgNodes[p.info.path]; if(n) n.g.classList.toggle("down", !up);
 p.row.querySelector(".link").textContent = up ? "up" : "down";
 p.row.querySelector(".linkbtn").textContent = up ? "link down" : "link up";
}
const svgNodes = {};  // port path -> {g, label}
async function loadPicture(t){
 const box = document.getElementById("topo");
 const r = await fetch("api/topology.svg");
 if(!r.ok){ box.textContent = "(no picture: this lab was not built from a file)"; return; }
 box.innerHTML = await r.text();
 const firstOfVm = {};
 for(const p of t.ports) if(p.vm && !(p.vm in firstOfVm)) firstOfVm[p.vm] = p.path;
 for(const g of box.querySelectorAll("g.node")){
  const id = (g.querySelector("title")||{}).textContent || "";
  let path = null;
  if(id.startsWith("pif:")) path = id.slice(4);
  else if(id.startsWith("vm:")) path = firstOfVm[id.slice(3)];
  if(!path || !ports[path]) continue;
  const bb = g.getBBox();
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", bb.x + bb.width / 2); label.setAttribute("y", bb.y + bb.height + 9);
  label.setAttribute("text-anchor", "middle"); label.setAttribute("class", "live");
  label.setAttribute("data-port", path);
  g.append(label); svgNodes[path] = {g, label};
 }
}
function paintNode(path, c){
 const n = svgNodes[path]; if(!n) return;
 const drops = Object.values(c.drops||{}).reduce((a,b)=>a+b, 0);
 n.label.textContent = c.rx_fps.toFixed(0) + "/" + c.tx_fps.toFixed(0) + " fps"
  + (drops ? " drops " + drops : "");
 n.label.classList.toggle("bad", drops > (n.drops || 0)); n.drops = drops;
}
async function loadTopology(){
 const t = await api("api/topology");
 const tbody = document.querySelector("#ports tbody");
 for(const info of t.ports){
  const row = el("tr", {id: "row-" + info.path, "data-port": info.path});
  row.append(el("td", {title: info.path + " (" + info.kind + ")"}, info.name),
   el("td", {class:"link"}), el("td", {class:"rxr"}, "0"), el("td", {class:"txr"}, "0"),
   el("td", {class:"rx"}, "0"), el("td", {class:"tx"}, "0"), el("td", {class:"drops"}, ""));
  const act = el("td");
  const b = el("button", {class:"linkbtn"});
  b.onclick = async () => {
   const p = ports[info.path];
   try { const r = await api("api/link", {port: info.path, up: !p.info.link_up});
         setLink(p, r.link_up); } catch(e){ logLine({kind:"error", text: String(e)}); }
  };
  const a = el("a", {class:"capture", href: "api/capture/" + encodeURIComponent(info.path)
   + ".pcapng?duration=10", download: info.name.replace("/", "_") + ".pcapng"}, "capture 10 s");
  act.append(b, " ", a); row.append(act);
  tbody.append(row);
  ports[info.path] = {info, row}; byName[info.name] = ports[info.path];
  setLink(ports[info.path], info.link_up);
 }
 loadPicture(t).catch(e => logLine({kind:"error", text: "picture: " + e.message}));
 const sel = document.getElementById("switch");
 for(const s of t.switches) sel.append(el("option", {value: s}, s));
 sel.onchange = loadMac;
 loadMac(); setInterval(loadMac, 2000);
 loadNeighbors(); setInterval(loadNeighbors, 2000);
}
async function loadNeighbors(){
 const rows = await api("api/neighbors");
 const tb = document.querySelector("#neighbors tbody"); tb.replaceChildren();
 for(const n of rows) { const tr = el("tr"); tr.append(el("td",{},n.device),
  el("td",{},n.port), el("td",{},n.config), el("td",{},n.system ? n.protocol+" "+n.system : "-"),
  el("td",{},n.remote_port), el("td",{},n.vlan ?? ""), el("td",{},n.mtu ?? ""),
  el("td",{},n.system ? n.hold_s : "")); tb.append(tr); }
}
async function loadMac(){
 const sw = document.getElementById("switch").value; if(!sw) return;
 const rows = await api("api/mac/" + sw.split("/").map(encodeURIComponent).join("/"));
 const tb = document.querySelector("#mac tbody"); tb.replaceChildren();
 for(const e of rows) { const tr = el("tr"); tr.append(el("td",{},e.vlan), el("td",{},e.mac),
  el("td",{},e.port), el("td",{},e.age_s.toFixed(1))); tb.append(tr); }
}
function logLine(e){
 const box = document.getElementById("events");
 const d = el("div", {class: e.kind}, (e.t_ns ? new Date(e.t_ns/1e6).toISOString().slice(11,23)
  + " " : "") + e.text);
 box.append(d); while(box.childElementCount > 500) box.firstChild.remove();
 box.scrollTop = box.scrollHeight;
}
function onUpdate(msg){
 for(const [path, c] of Object.entries(msg.ports)){
  const p = ports[path]; if(!p) continue;
  const r = p.row;
  r.querySelector(".rx").textContent = c.rx_frames;
  r.querySelector(".tx").textContent = c.tx_frames;
  r.querySelector(".rxr").textContent = c.rx_fps.toFixed(0);
  r.querySelector(".txr").textContent = c.tx_fps.toFixed(0);
  r.querySelector(".drops").textContent = dropsText(c.drops);
  paintNode(path, c);
 }
 for(const e of msg.events){ logLine(e);
  const m = /^(\\S+) link (up|down)$/.exec(e.text);
  if(e.kind === "link" && m && byName[m[1]]) setLink(byName[m[1]], m[2] === "up"); }
}
function connect(){
 const ws = new WebSocket(location.href.replace(/^http/, "ws").replace(/[?#].*$/, "")
  .replace(/\\/?$/, "/") + "api/ws");
 const st = document.getElementById("status");
 ws.onopen = () => { st.textContent = "live"; };
 ws.onmessage = ev => onUpdate(JSON.parse(ev.data));
 ws.onclose = () => { st.textContent = "disconnected, retrying"; setTimeout(connect, 1000); };
}
document.getElementById("trace-go").onclick = async () => {
 const out = document.getElementById("trace-out");
 try { const t = await api("api/trace", {from: document.getElementById("trace-from").value,
  frame: document.getElementById("trace-frame").value}); out.textContent = t.text; }
 catch(e){ out.textContent = "error: " + e.message; }
};
loadTopology().then(connect).catch(e => { document.getElementById("status").textContent =
 "error: " + e.message; });
</script></body></html>
"""
