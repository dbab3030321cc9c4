// relaylab's voice phone: a ConversationRelay client in the browser.
//
// It does in the page what Twilio's cloud does on a real call: the browser's speech
// recognition turns the learner's voice into `prompt` frames, the browser's speech
// synthesis speaks the relay's `text` tokens clause by clause, and talking over the
// agent stops the speech and sends `interrupt` with exactly the words spoken (from the
// synthesiser's word-boundary events). Frames travel as widget messages to the kernel,
// which holds the real WebSocket to the relay (relaylab/notebook/voice/bridge.py).

const CLAUSE_END = /[.!?;:,\u2026]["')\]]*\s+|\n+/g;
const LONG_CLAUSE_WORDS = 14; // speak a clause with no punctuation once it is this long
const DTMF = {
  1: [697, 1209], 2: [697, 1336], 3: [697, 1477], A: [697, 1633],
  4: [770, 1209], 5: [770, 1336], 6: [770, 1477], B: [770, 1633],
  7: [852, 1209], 8: [852, 1336], 9: [852, 1477], C: [852, 1633],
  "*": [941, 1209], 0: [941, 1336], "#": [941, 1477], D: [941, 1633],
};
// Barge-in from the microphone's level: louder than this (RMS of the samples, 0..1) for
// LEVEL_FRAMES readings in a row, LEVEL_EVERY_MS apart, counts as the caller speaking.
const LEVEL_THRESHOLD = 0.04;
const LEVEL_FRAMES = 4;
const LEVEL_EVERY_MS = 40;
// Some voices (Chrome's online Google voices among them) send no word boundaries; then the
// words of the clause being spoken are estimated at this pace.
const ESTIMATED_MS_PER_WORD = 360;
const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"];

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function now() {
  return performance.now();
}

function ms(value) {
  return value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(1)} s`;
}

function wordEnd(text, from) {
  const match = /\s/.exec(text.slice(from));
  return match ? from + match.index : text.length;
}

// One talk cycle: the tokens of one reply, cut into clauses and spoken in order.
class TalkCycle {
  constructor(turn, interruptible) {
    this.sent = ""; // every token, in the relay's spelling
    this.clauseFrom = 0; // where the clause not yet queued begins
    this.clauses = []; // [start, end) offsets into `sent`, waiting to be spoken
    this.spokenEnd = 0; // end of the last word the synthesiser began
    this.playedEnd = 0; // end of the last clause reported in tokensPlayed
    this.closed = false; // last:true arrived
    this.interrupted = false;
    this.done = false;
    this.speechStartedAt = null;
    this.turn = turn;
    turn.cycle = this;
    this.interruptible = interruptible;
  }

  add(token) {
    this.sent += token;
    this.queueClauses(false);
  }

  queueClauses(all) {
    for (;;) {
      const rest = this.sent.slice(this.clauseFrom);
      CLAUSE_END.lastIndex = 0;
      const match = CLAUSE_END.exec(rest);
      let end = match ? match.index + match[0].length : 0;
      if (!end && /\s$/.test(rest) && rest.split(/\s+/).filter(Boolean).length >= LONG_CLAUSE_WORDS) {
        end = rest.length;
      }
      if (!end && all) end = rest.length;
      if (!end) return;
      if (rest.slice(0, end).trim()) this.clauses.push([this.clauseFrom, this.clauseFrom + end]);
      this.clauseFrom += end;
    }
  }

  get heard() {
    return this.sent.slice(0, this.spokenEnd).trimEnd();
  }
}

class VoicePhone {
  constructor(model, el) {
    this.model = model;
    this.el = el;
    this.config = null;
    this.onCall = false;
    this.cycle = null; // the talk cycle being spoken (or the greeting)
    this.waiting = []; // talk cycles that arrived while another was still being spoken
    this.generation = 0; // bumps on every stop, so late synthesiser events are ignored
    this.utterance = null;
    this.audio = null;
    this.recognition = null;
    this.recognising = false;
    this.lastPartial = "";
    this.heardSince = 0; // when the caller's current speech began
    this.turns = [];
    this.frames = []; // every frame sent, for tests and the frame log
    this.tones = []; // DTMF digits played for sendDigits
    this.ttsLanguage = "en-US";
    this.transcriptionLanguage = "en-US";
    this.build();
    this.onMessage = (message) => this.receive(message);
    model.on("msg:custom", this.onMessage);
    this.onMode = () => this.showMode();
    model.on("change:mode", this.onMode);
    this.showMode();
    el.voicePhone = this; // for tests and curious learners in the console
  }

  // -- the page --------------------------------------------------------------------

  build() {
    this.status = h("div", { class: "rlv-status" }, "Not on a call. Press Call.");
    this.why = h("div", { class: "rlv-why", hidden: "" });
    this.callButton = h("button", { class: "rlv-call", onclick: () => this.toggleCall() }, "Call");
    this.modeButton = h("button", { class: "rlv-mode", onclick: () => this.switchMode() });
    this.modeNote = h("span", { class: "rlv-mode-note" });
    this.talkButton = h(
      "button",
      {
        class: "rlv-talk",
        onpointerdown: () => this.pushToTalk(true),
        onpointerup: () => this.pushToTalk(false),
        onpointerleave: () => this.recognising && this.pushToTalk(false),
      },
      "Hold to talk",
    );
    this.textBox = h("input", { class: "rlv-text", type: "text", placeholder: "or type what you say" });
    this.textBox.addEventListener("keydown", (event) => {
      if (event.key === "Enter") this.sayTyped();
    });
    this.sayButton = h("button", { class: "rlv-say", onclick: () => this.sayTyped() }, "Say");
    this.keypad = h("div", { class: "rlv-keypad" });
    for (const key of KEYS) {
      this.keypad.append(h("button", { class: "rlv-key", "data-key": key, onclick: () => this.press(key) }, key));
    }
    this.turnList = h("div", { class: "rlv-turns" });
    this.el.classList.add("rlv-phone");
    this.el.append(
      h("div", { class: "rlv-bar" }, this.callButton, this.modeButton, this.modeNote),
      this.status,
      this.why,
      h("div", { class: "rlv-input" }, this.talkButton, this.textBox, this.sayButton),
      this.keypad,
      this.turnList,
    );
  }

  setStatus(text) {
    this.status.textContent = text;
  }

  explain(text) {
    this.why.hidden = !text;
    this.why.textContent = text || "";
  }

  get mode() {
    return this.model.get("mode") === "speaker" ? "speaker" : "headphones";
  }

  switchMode() {
    this.model.set("mode", this.mode === "speaker" ? "headphones" : "speaker");
    this.model.save_changes();
    this.showMode();
  }

  showMode() {
    const speaker = this.mode === "speaker";
    this.modeButton.textContent = speaker ? "Speaker mode" : "Headphones mode";
    this.modeNote.textContent = speaker
      ? "push to talk: hold the button while you speak (your speakers would otherwise interrupt Claude)"
      : "barge-in on: talk any time, and you cut Claude off as on a real call";
    this.el.dataset.mode = this.mode;
    if (this.onCall) this.listenContinuously();
  }

  // -- the call --------------------------------------------------------------------

  toggleCall() {
    if (this.onCall) this.hangUp("You hung up.");
    else this.dial();
  }

  dial() {
    this.setStatus("Dialling the relay...");
    this.callButton.disabled = true;
    this.model.send({ op: "dial" });
  }

  hangUp(why) {
    this.stopSpeaking();
    this.stopListening();
    if (this.onCall) this.model.send({ op: "hangup" });
    this.ended(why);
  }

  ended(why) {
    this.onCall = false;
    this.stopLevelMeter();
    this.callButton.textContent = "Call";
    this.callButton.disabled = false;
    this.setStatus(why);
  }

  receive(message) {
    if (message.op === "connected") this.connected(message.config);
    else if (message.op === "frame") this.onFrame(message.frame);
    else if (message.op === "closed") {
      if (this.onCall) {
        this.stopSpeaking();
        this.stopListening();
        this.ended(`The relay closed the call (code ${message.code ?? "none"}).`);
      }
    } else if (message.op === "error") {
      this.callButton.disabled = false;
      this.setStatus(`Problem: ${message.message}`);
    }
  }

  connected(config) {
    this.config = config;
    this.onCall = true;
    this.ttsLanguage = config.ttsLanguage;
    this.transcriptionLanguage = config.transcriptionLanguage;
    this.callButton.textContent = "Hang up";
    this.callButton.disabled = false;
    this.keypad.classList.toggle("rlv-off", !config.dtmfDetection);
    this.keypad.title = config.dtmfDetection ? "" : "the TwiML has no dtmfDetection, so Twilio would send no dtmf";
    this.send({
      type: "setup",
      sessionId: config.sessionId,
      callSid: config.callSid,
      parentCallSid: "",
      accountSid: config.accountSid,
      from: config.from,
      to: config.to,
      forwardedFrom: "",
      callerName: "",
      direction: "inbound",
      callType: "PSTN",
      callStatus: "RINGING",
      customParameters: config.customParameters,
    });
    this.setStatus("On a call.");
    if (config.welcomeGreeting && config.welcomeGreeting.trim()) {
      const turn = this.addTurn("agent", "", "greeting (spoken by Twilio, not sent to the relay)");
      const cycle = new TalkCycle(turn, config.welcomeGreetingInterruptible);
      cycle.greeting = true;
      this.cycle = cycle;
      cycle.add(config.welcomeGreeting);
      cycle.closed = true;
      cycle.queueClauses(true);
      this.speakNext();
    }
    this.listenContinuously();
  }

  send(message) {
    const frame = JSON.stringify(message);
    this.frames.push(message);
    this.model.send({ op: "frame", frame });
  }

  events(name) {
    return name === "tokensPlayed" ? this.config?.tokensPlayed : this.config?.speakerEvents;
  }

  info(name, value) {
    if (this.events(name)) this.send({ type: "info", name, value });
  }

  // -- frames from the relay -------------------------------------------------------

  onFrame(frame) {
    let message;
    try {
      message = JSON.parse(frame);
    } catch {
      this.send({ type: "error", description: `Invalid message received: ${frame.slice(0, 100)}` });
      return;
    }
    const kind = message && message.type;
    if (kind === "text") this.onText(message);
    else if (kind === "play") this.onPlay(message);
    else if (kind === "sendDigits") this.playDigits(String(message.digits ?? ""));
    else if (kind === "language") this.onLanguage(message);
    else if (kind === "end") this.onEnd(message);
    else this.send({ type: "error", description: `Invalid message received: unknown type ${kind}` });
  }

  onText(message) {
    if (typeof message.token !== "string") {
      this.send({ type: "error", description: "Invalid message received: text without a token" });
      return;
    }
    // Tokens belong to the newest talk cycle until its last:true. A new cycle that starts
    // while another is still being spoken (the greeting, say) waits behind it.
    const speaking = this.cycle && !this.cycle.done && !this.cycle.interrupted;
    let cycle = this.waiting.at(-1) ?? this.cycle;
    if (cycle && (cycle.greeting || cycle.closed)) cycle = null;
    if (!cycle) {
      if (!message.token && message.last) return; // an empty close of a cycle already ended
      const interruptible = message.interruptible ?? this.config?.interruptible ?? "any";
      cycle = new TalkCycle(this.addTurn("agent", ""), interruptible);
      cycle.turn.firstTokenAt = now();
      if (speaking) this.waiting.push(cycle);
      else this.cycle = cycle;
    }
    if (message.lang) this.ttsLanguage = message.lang;
    if (!cycle.interrupted) {
      cycle.add(message.token);
      if (message.last) {
        cycle.closed = true;
        cycle.queueClauses(true);
      }
      this.drawCycle(cycle);
      if (!this.utterance && this.cycle === cycle) this.speakNext();
    } else if (message.last) {
      cycle.closed = true; // the relay closed the cycle we cut off: nothing to speak
    }
  }

  onPlay(message) {
    this.stopAudio();
    const audio = new Audio(String(message.source ?? ""));
    const loops = Number(message.loop ?? 1);
    let left = loops === 0 ? Infinity : Math.max(1, loops);
    audio.addEventListener("ended", () => {
      left -= 1;
      if (left > 0 && this.audio === audio) audio.play().catch(() => {});
      else if (this.audio === audio) this.audio = null;
    });
    this.audio = audio;
    this.addTurn("agent", `[plays ${message.source}]`);
    audio.play().catch((error) => this.explain(`Could not play ${message.source}: ${error.message}`));
  }

  stopAudio() {
    if (this.audio) {
      this.audio.pause();
      this.audio = null;
    }
  }

  onLanguage(message) {
    if (message.ttsLanguage) this.ttsLanguage = message.ttsLanguage;
    if (message.transcriptionLanguage && message.transcriptionLanguage !== this.transcriptionLanguage) {
      this.transcriptionLanguage = message.transcriptionLanguage;
      if (this.recognition) this.recognition.lang = this.transcriptionLanguage;
      this.restartListening();
    }
    this.addTurn("note", `language: speaking ${this.ttsLanguage}, listening for ${this.transcriptionLanguage}`);
  }

  onEnd(message) {
    const data = message.handoffData ? `: ${message.handoffData}` : "";
    const finish = () => {
      this.stopListening();
      this.model.send({ op: "hangup" });
      this.ended(`The relay ended the call${data}.`);
    };
    // Speech already queued is still spoken, as on a real call.
    const last = this.waiting.at(-1) ?? this.cycle;
    if (last && !last.done && !last.interrupted) last.onDone = finish;
    else finish();
  }

  // -- speaking --------------------------------------------------------------------

  get agentSpeaking() {
    const cycle = this.cycle;
    return Boolean((cycle && !cycle.done && !cycle.interrupted && cycle.sent.trim()) || this.audio);
  }

  // A voice on this device first: those report word boundaries, online ones often do not.
  voiceFor(lang) {
    const voices = window.speechSynthesis.getVoices();
    const fits = [(v) => v.lang === lang, (v) => v.lang.startsWith(lang.slice(0, 2))];
    for (const fit of fits) {
      const voice = voices.find((v) => fit(v) && v.localService) || voices.find(fit);
      if (voice) return voice;
    }
    return undefined;
  }

  speakNext() {
    const cycle = this.cycle;
    if (!cycle || cycle.interrupted || this.utterance) return;
    const clause = cycle.clauses.shift();
    if (!clause) {
      if (cycle.closed && !cycle.done) this.finishCycle(cycle);
      return;
    }
    const [start, end] = clause;
    const text = cycle.sent.slice(start, end);
    const generation = this.generation;
    const utterance = new SpeechSynthesisUtterance(text);
    utterance.lang = this.ttsLanguage;
    const voice = this.voiceFor(this.ttsLanguage);
    if (voice) utterance.voice = voice;
    this.clause = { start, end, text, startedAt: null, boundaries: 0 };
    const clauseState = this.clause;
    utterance.onstart = () => {
      if (generation !== this.generation) return;
      clauseState.startedAt = now();
      if (cycle.speechStartedAt === null) {
        cycle.speechStartedAt = now();
        cycle.turn.speechAt = cycle.speechStartedAt;
        if (!cycle.greeting) this.info("agentSpeaking", "on"); // Twilio's own words: not reported
      }
    };
    utterance.onboundary = (event) => {
      if (generation !== this.generation || event.name !== "word") return;
      clauseState.boundaries += 1;
      const from = start + event.charIndex;
      const to = event.charLength > 0 ? from + event.charLength : wordEnd(cycle.sent, from);
      cycle.spokenEnd = Math.max(cycle.spokenEnd, Math.min(to, end));
      this.drawCycle(cycle);
    };
    const finished = () => {
      if (generation !== this.generation || this.utterance !== utterance) return;
      this.utterance = null;
      cycle.spokenEnd = Math.max(cycle.spokenEnd, start + text.trimEnd().length);
      this.reportPlayed(cycle);
      this.drawCycle(cycle);
      this.speakNext();
    };
    utterance.onend = finished;
    utterance.onerror = (event) => {
      if (generation === this.generation && event.error !== "interrupted" && event.error !== "canceled") {
        this.explain(`The speech synthesiser failed (${event.error}); the words are shown instead.`);
      }
      finished();
    };
    this.utterance = utterance;
    window.speechSynthesis.speak(utterance);
  }

  reportPlayed(cycle) {
    if (cycle.greeting || cycle.spokenEnd <= cycle.playedEnd) return;
    const played = cycle.sent.slice(cycle.playedEnd, cycle.spokenEnd);
    cycle.playedEnd = cycle.spokenEnd;
    this.info("tokensPlayed", played);
  }

  finishCycle(cycle) {
    cycle.done = true;
    cycle.turn.endedAt = now();
    if (cycle.speechStartedAt !== null && !cycle.greeting) this.info("agentSpeaking", "off");
    this.drawCycle(cycle);
    if (cycle.onDone) cycle.onDone();
    if (this.cycle === cycle && this.waiting.length) {
      this.cycle = this.waiting.shift();
      this.speakNext();
    }
  }

  stopSpeaking() {
    this.generation += 1;
    this.utterance = null;
    window.speechSynthesis.cancel();
    this.stopAudio();
  }

  // Barge-in: the caller spoke over the agent. Stop at once, then tell the relay what
  // was heard: the words the synthesiser began, in the relay's own spelling.
  bargeIn(how, by = null) {
    const cycle = this.cycle;
    const playing = this.agentSpeaking;
    if (!playing) return false;
    const mode = cycle ? String(cycle.interruptible) : "any";
    const allowed = mode === "true" || mode === "any" || mode === how;
    if (!allowed) return false;
    const at = now();
    const clause = this.utterance ? this.clause : null;
    this.stopSpeaking();
    if (!cycle || cycle.done) return true; // only audio was playing
    if (clause && clause.startedAt !== null && clause.boundaries === 0) {
      // no word events from this voice: count the words its time on air allows
      const words = Math.floor((at - clause.startedAt) / ESTIMATED_MS_PER_WORD) + 1;
      const match = new RegExp(`^\\s*(\\S+\\s+){0,${words - 1}}\\S+`).exec(clause.text);
      if (match) cycle.spokenEnd = Math.max(cycle.spokenEnd, clause.start + match[0].length);
      cycle.turn.estimated = true;
    }
    cycle.interrupted = true;
    cycle.turn.interruptedAt = at;
    cycle.turn.cutBy = by;
    this.reportPlayed(cycle);
    if (cycle.speechStartedAt !== null && !cycle.greeting) this.info("agentSpeaking", "off");
    const duration = cycle.speechStartedAt === null ? 0 : Math.round(at - cycle.speechStartedAt);
    if (this.waiting.length) {
      // speech queued behind is cut off too; tokens still coming for the newest are dropped
      for (const queued of this.waiting) queued.interrupted = true;
      this.cycle = this.waiting.at(-1);
      this.waiting = [];
    }
    this.send({
      type: "interrupt",
      utteranceUntilInterrupt: cycle.heard,
      durationUntilInterruptMs: duration,
    });
    this.drawCycle(cycle);
    return true;
  }

  // -- listening -------------------------------------------------------------------

  recogniserClass() {
    return window.SpeechRecognition || window.webkitSpeechRecognition;
  }

  listenContinuously() {
    if (!this.onCall) return;
    if (this.mode === "headphones") {
      this.startListening();
      this.startLevelMeter();
    } else {
      this.stopListening();
      this.stopLevelMeter();
    }
  }

  // The microphone's level, for barge-in where recognition is slow to say "speech
  // started" or missing altogether (Firefox). Only in headphones mode: with speakers the
  // agent's own voice would trip it.
  async startLevelMeter() {
    if (this.meter || !navigator.mediaDevices?.getUserMedia) return;
    const meter = { timer: null, stream: null, source: null, readings: 0 };
    this.meter = meter;
    try {
      meter.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false },
      });
    } catch (error) {
      if (this.meter === meter) this.meter = null;
      this.el.dataset.level = `off: ${error.name}`;
      return;
    }
    const context = this.audioContext();
    if (this.meter !== meter || !context) {
      meter.stream.getTracks().forEach((track) => track.stop());
      return;
    }
    if (context.state === "suspended") await context.resume().catch(() => {});
    meter.source = context.createMediaStreamSource(meter.stream);
    const analyser = context.createAnalyser();
    analyser.fftSize = 1024;
    meter.source.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    let loud = 0;
    this.el.dataset.level = "on";
    meter.timer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const sample of samples) sum += sample * sample;
      this.level = Math.sqrt(sum / samples.length);
      meter.readings += 1;
      loud = this.level > LEVEL_THRESHOLD ? loud + 1 : 0;
      if (loud === LEVEL_FRAMES && this.agentSpeaking) {
        this.info("clientSpeaking", "on");
        this.bargeIn("speech", "your voice's level");
      }
    }, LEVEL_EVERY_MS);
  }

  stopLevelMeter() {
    const meter = this.meter;
    this.meter = null;
    if (!meter) return;
    clearInterval(meter.timer);
    meter.source?.disconnect();
    meter.stream?.getTracks().forEach((track) => track.stop());
  }

  pushToTalk(down) {
    if (!this.onCall) return;
    if (down) {
      this.bargeIn("speech"); // in speaker mode the button is how you cut in
      this.startListening();
    } else if (this.mode === "speaker") {
      this.stopListening(true);
    }
  }

  startListening() {
    const Recogniser = this.recogniserClass();
    if (!Recogniser) {
      this.noRecogniser(
        "This browser has no speech recognition (Firefox has none; Chrome, Edge and Safari do): type what you would say and press Say.",
      );
      return;
    }
    if (this.recognising) return;
    const recognition = this.recognition || this.makeRecogniser(Recogniser);
    recognition.lang = this.transcriptionLanguage;
    try {
      recognition.start();
      this.recognising = true;
    } catch (error) {
      // start() while already started throws InvalidStateError: it is listening
      this.recognising = error.name === "InvalidStateError";
    }
  }

  makeRecogniser(Recogniser) {
    const recognition = new Recogniser();
    recognition.continuous = true;
    recognition.interimResults = true; // partial results make barge-in quick
    recognition.onspeechstart = () => this.callerSpeaking();
    recognition.onresult = (event) => this.onResult(event);
    recognition.onspeechend = () => this.info("clientSpeaking", "off");
    recognition.onerror = (event) => this.onRecogniserError(event);
    recognition.onend = () => {
      this.recognising = false;
      if (this.onCall && this.mode === "headphones" && !this.recogniserBroken) this.startListening();
    };
    this.recognition = recognition;
    return recognition;
  }

  onRecogniserError(event) {
    if (event.error === "no-speech" || event.error === "aborted") return;
    const reasons = {
      "not-allowed": "The microphone was not allowed (check the browser's site permissions)",
      "service-not-allowed": "The browser does not allow its speech recognition service here",
      "audio-capture": "No microphone was found",
      network: "The browser's speech recognition needs its online service, which it could not reach",
      "language-not-supported": `The recogniser does not support ${this.transcriptionLanguage}`,
    };
    const reason = reasons[event.error] || `Speech recognition failed (${event.error})`;
    this.noRecogniser(`${reason}: type what you would say and press Say.`);
  }

  noRecogniser(why) {
    this.recogniserBroken = true;
    this.el.dataset.recognition = "off";
    this.talkButton.disabled = true;
    this.explain(why);
  }

  stopListening(finish = false) {
    if (this.recognition && this.recognising) {
      if (finish) this.recognition.stop();
      else this.recognition.abort();
    }
    this.recognising = false;
  }

  restartListening() {
    if (!this.recognition) return;
    this.recognition.abort();
    this.recognising = false;
    this.recognition = null;
    this.listenContinuously();
  }

  callerSpeaking() {
    if (!this.heardSince) this.heardSince = now();
    this.info("clientSpeaking", "on");
    if (this.mode === "headphones") this.bargeIn("speech");
  }

  onResult(event) {
    if (!this.heardSince) this.callerSpeaking(); // some recognisers skip speechstart
    let interim = "";
    for (let i = event.resultIndex; i < event.results.length; i += 1) {
      const result = event.results[i];
      const words = result[0].transcript.trim();
      if (!words) continue;
      if (result.isFinal) {
        this.prompt(words);
        interim = "";
      } else {
        interim = `${interim} ${words}`.trim();
      }
    }
    if (interim && interim !== this.lastPartial) {
      this.lastPartial = interim;
      this.showPartial(interim);
      if (this.config?.partialPrompts && this.mayReport("speech")) {
        this.send({ type: "prompt", voicePrompt: interim, lang: this.transcriptionLanguage, last: false });
      }
    }
  }

  // Input made while the agent speaks and may not interrupt it: Twilio reports it only
  // if the TwiML's reportInputDuringAgentSpeech allows that kind (default: none).
  mayReport(kind) {
    if (!this.agentSpeaking) return true;
    const report = String(this.config?.reportInputDuringAgentSpeech ?? "none");
    return report === "any" || report === "true" || report === kind;
  }

  prompt(words) {
    this.bargeIn("speech");
    this.lastPartial = "";
    this.heardSince = 0;
    const turn = this.partialTurn || this.addTurn("caller", words);
    this.partialTurn = null;
    turn.text.textContent = words;
    turn.node.classList.remove("rlv-partial");
    if (!this.mayReport("speech")) {
      turn.node.classList.add("rlv-dropped");
      turn.meta.textContent =
        "not sent: Claude may not be interrupted by speech here (TwiML interruptible), and Twilio does not report speech made over it (reportInputDuringAgentSpeech)";
      return;
    }
    turn.promptAt = now();
    this.lastPromptAt = turn.promptAt;
    this.send({ type: "prompt", voicePrompt: words, lang: this.transcriptionLanguage, last: true });
  }

  showPartial(words) {
    if (!this.partialTurn) {
      this.partialTurn = this.addTurn("caller", words);
      this.partialTurn.node.classList.add("rlv-partial");
    }
    this.partialTurn.text.textContent = words;
  }

  sayTyped() {
    const words = this.textBox.value.trim();
    if (!words || !this.onCall) return;
    this.textBox.value = "";
    this.bargeIn("speech");
    if (this.config?.partialPrompts && this.mayReport("speech")) {
      const all = words.split(/\s+/);
      for (let n = 1; n < all.length; n += 1) {
        this.send({ type: "prompt", voicePrompt: all.slice(0, n).join(" "), lang: this.transcriptionLanguage, last: false });
      }
    }
    this.prompt(words);
  }

  press(key) {
    if (!this.onCall) return;
    this.tone(key, 0, 0.15);
    if (!this.config?.dtmfDetection) {
      this.explain("The TwiML has no dtmfDetection, so Twilio sends no dtmf frames: the relay does not hear keys.");
      return;
    }
    this.bargeIn("dtmf");
    const turn = this.addTurn("caller", `pressed ${key}`);
    if (!this.mayReport("dtmf")) {
      turn.node.classList.add("rlv-dropped");
      turn.meta.textContent = "not sent: keys may not interrupt here, and Twilio does not report keys pressed over speech";
      return;
    }
    this.send({ type: "dtmf", digit: key });
  }

  // -- DTMF tones (sendDigits) ------------------------------------------------------

  audioContext() {
    if (!this.context && window.AudioContext) this.context = new AudioContext();
    return this.context;
  }

  tone(key, at, seconds) {
    const pair = DTMF[key];
    const context = this.audioContext();
    if (!pair || !context) return;
    const start = context.currentTime + at;
    const gain = context.createGain();
    gain.gain.value = 0.1;
    gain.connect(context.destination);
    for (const frequency of pair) {
      const oscillator = context.createOscillator();
      oscillator.frequency.value = frequency;
      oscillator.connect(gain);
      oscillator.start(start);
      oscillator.stop(start + seconds);
    }
  }

  playDigits(digits) {
    let at = 0;
    for (const digit of digits) {
      if (digit === "w") {
        at += 0.5; // Twilio's w: wait half a second
        continue;
      }
      if (!DTMF[digit]) continue;
      this.tones.push({ digit, at });
      this.tone(digit, at, 0.1);
      at += 0.2;
    }
    this.addTurn("agent", `[sends digits ${digits}]`);
  }

  // -- turns -----------------------------------------------------------------------

  addTurn(who, words, note) {
    const label = { agent: "Claude", caller: "You", note: "" }[who];
    const heard = h("span", { class: "rlv-heard" });
    const unheard = h("span", { class: "rlv-unheard" });
    const text = h("span", { class: "rlv-words" }, words);
    const meta = h("div", { class: "rlv-meta" }, note || "");
    const node = h(
      "div",
      { class: `rlv-turn rlv-${who}` },
      h("b", {}, label ? `${label}: ` : ""),
      who === "agent" && !words ? h("span", {}, heard, unheard) : text,
      meta,
    );
    const turn = { who, node, text, heard, unheard, meta, promptAt: null };
    if (who === "agent") turn.promptAt = this.lastPromptAt ?? null;
    this.turns.push(turn);
    this.turnList.append(node);
    while (this.turnList.children.length > 40) this.turnList.firstChild.remove();
    return turn;
  }

  drawCycle(cycle) {
    const turn = cycle.turn;
    const heard = cycle.sent.slice(0, cycle.spokenEnd);
    turn.heard.textContent = heard;
    turn.unheard.textContent = cycle.sent.slice(cycle.spokenEnd);
    turn.node.classList.toggle("rlv-cut", cycle.interrupted);
    const parts = [];
    if (cycle.greeting) parts.push("greeting, spoken by Twilio itself");
    if (turn.promptAt !== null && turn.firstTokenAt) parts.push(`first token ${ms(turn.firstTokenAt - turn.promptAt)} after your words`);
    if (turn.promptAt !== null && turn.speechAt) parts.push(`speech began after ${ms(turn.speechAt - turn.promptAt)}`);
    const words = (text) => text.split(/\s+/).filter(Boolean).length;
    if (cycle.interrupted) {
      const by = turn.cutBy ? ` (heard by ${turn.cutBy})` : "";
      if (turn.estimated) parts.push("this voice gives no word events: the last words heard are estimated from the time spoken");
      parts.push(`you cut in${by} after ${ms((turn.interruptedAt ?? now()) - (turn.speechAt ?? now()))}: heard ${words(heard)} of ${words(cycle.sent)} words (grey: never spoken)`);
    } else if (cycle.done && turn.speechAt) {
      parts.push(`spoke for ${ms(turn.endedAt - turn.speechAt)}`);
    }
    turn.meta.textContent = parts.join(" · ");
  }

  destroy() {
    this.model.off("msg:custom", this.onMessage);
    this.model.off("change:mode", this.onMode);
    if (this.onCall) this.hangUp("The widget was closed.");
  }
}

export default {
  render({ model, el }) {
    const phone = new VoicePhone(model, el);
    return () => phone.destroy();
  },
};
