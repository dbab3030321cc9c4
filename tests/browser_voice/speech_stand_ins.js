// Scripted stand-ins at the Web Speech API boundary, for headless Chromium (it has no
// speech engines). window.__speechConfig (set by an earlier init script) tunes them:
//   msPerWord: synthesiser speed; boundaries: false for a voice without word events;
//   recognition: "fake" | "missing" | "denied"; microphone: true to keep getUserMedia.
// The synthesiser uses the browser's own SpeechSynthesisUtterance and event classes and
// fires start, one "word" boundary per word at msPerWord, then end; cancel() stops at
// once and fires error "interrupted", as Chrome does. window.__tts.log is the ground
// truth of which words were begun; window.__mic speaks to the recogniser.
(() => {
  const config = Object.assign({ msPerWord: 200, recognition: "fake" }, window.__speechConfig || {});

  function speechEvent(Kind, type, init) {
    try {
      return new Kind(type, init);
    } catch {
      const event = new Event(type);
      for (const [key, value] of Object.entries(init)) Object.defineProperty(event, key, { value });
      return event;
    }
  }

  class StandInSynthesis extends EventTarget {
    constructor() {
      super();
      this.queue = [];
      this.current = null;
      this.timers = [];
      this.log = []; // {word, text, charIndex, lang, at}
      this.cancels = []; // times cancel() stopped speech
      this.utterances = []; // {text, lang}
    }
    get speaking() { return this.current !== null; }
    get pending() { return this.queue.length > 0; }
    get paused() { return false; }
    getVoices() { return []; }
    pause() {}
    resume() {}
    speak(utterance) {
      this.queue.push(utterance);
      if (!this.current) this.next();
    }
    next() {
      const utterance = this.queue.shift();
      this.current = utterance || null;
      if (!utterance) return;
      this.utterances.push({ text: utterance.text, lang: utterance.lang });
      const words = [...utterance.text.matchAll(/\S+/g)];
      const began = performance.now();
      const later = (ms, fn) => this.timers.push(setTimeout(fn, ms));
      later(20, () => utterance.dispatchEvent(speechEvent(SpeechSynthesisEvent, "start", { utterance, charIndex: 0, elapsedTime: 0, name: "" })));
      words.forEach((match, i) => {
        later(20 + i * config.msPerWord, () => {
          this.log.push({ word: match[0], text: utterance.text, charIndex: match.index, lang: utterance.lang, at: performance.now() });
          if (config.boundaries === false) return; // a voice that reports no words
          utterance.dispatchEvent(speechEvent(SpeechSynthesisEvent, "boundary", {
            utterance, charIndex: match.index, charLength: match[0].length,
            elapsedTime: performance.now() - began, name: "word",
          }));
        });
      });
      later(20 + words.length * config.msPerWord, () => {
        this.timers = [];
        this.current = null;
        utterance.dispatchEvent(speechEvent(SpeechSynthesisEvent, "end", { utterance, charIndex: utterance.text.length, elapsedTime: performance.now() - began, name: "" }));
        if (!this.current) this.next(); // an end handler may already have spoken again
      });
    }
    cancel() {
      this.timers.forEach(clearTimeout);
      this.timers = [];
      const utterance = this.current;
      this.queue = [];
      this.current = null;
      if (utterance) {
        this.cancels.push(performance.now());
        utterance.dispatchEvent(speechEvent(SpeechSynthesisErrorEvent, "error", { utterance, error: "interrupted", charIndex: 0, elapsedTime: 0 }));
      }
    }
  }

  const tts = new StandInSynthesis();
  Object.defineProperty(window, "speechSynthesis", { value: tts, configurable: true });
  window.__tts = tts;

  class StandInRecognition extends EventTarget {
    constructor() {
      super();
      this.lang = "en-US";
      this.continuous = false;
      this.interimResults = false;
      this.started = false;
      this.finals = [];
      StandInRecognition.made.push(this);
    }
    fire(type, props = {}) {
      const event = new Event(type);
      Object.assign(event, props);
      this.dispatchEvent(event);
      const handler = this[`on${type}`];
      if (handler) handler.call(this, event);
    }
    start() {
      if (this.started) throw new DOMException("recognition has already started", "InvalidStateError");
      if (config.recognition === "denied") {
        setTimeout(() => { this.fire("error", { error: "not-allowed" }); this.fire("end"); }, 10);
        return;
      }
      this.started = true;
      this.finals = [];
      StandInRecognition.starts += 1;
      setTimeout(() => this.fire("start"), 5);
    }
    stop() { this.abort(); }
    abort() {
      if (!this.started) return;
      this.started = false;
      setTimeout(() => this.fire("end"), 5);
    }
  }
  StandInRecognition.made = [];
  StandInRecognition.starts = 0;

  const result = (transcript, isFinal) => Object.assign([{ transcript, confidence: 0.9 }], { isFinal });
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  window.__mic = {
    listening() {
      return StandInRecognition.made.some((r) => r.started);
    },
    recogniser() {
      return StandInRecognition.made.find((r) => r.started);
    },
    startSpeaking() {
      const r = this.recogniser();
      if (!r) return false;
      r.fire("speechstart");
      return true;
    },
    // Say `text`: speech start, a growing interim result per word, then the final one.
    async say(text, msPerWord = 80) {
      const r = this.recogniser();
      if (!r) return false;
      r.fire("speechstart");
      const words = text.split(/\s+/);
      for (let n = 1; n <= words.length; n += 1) {
        await sleep(msPerWord);
        if (!r.started) return false;
        const final = n === words.length;
        const current = result(words.slice(0, n).join(" "), final);
        const results = [...r.finals, current];
        r.fire("result", { resultIndex: r.finals.length, results });
        if (final) r.finals.push(current);
      }
      r.fire("speechend");
      return true;
    },
    get starts() { return StandInRecognition.starts; },
  };

  if (config.recognition === "missing") {
    Object.defineProperty(window, "SpeechRecognition", { value: undefined, configurable: true });
    Object.defineProperty(window, "webkitSpeechRecognition", { value: undefined, configurable: true });
  } else {
    Object.defineProperty(window, "SpeechRecognition", { value: StandInRecognition, configurable: true });
    Object.defineProperty(window, "webkitSpeechRecognition", { value: StandInRecognition, configurable: true });
  }

  // No microphone unless a test brings Chromium's fake capture device (microphone: true).
  if (!config.microphone && navigator.mediaDevices) {
    navigator.mediaDevices.getUserMedia = () =>
      Promise.reject(new DOMException("no microphone in this test", "NotFoundError"));
  }

  // Audio: record what the page asked to play (headless has no sound card to check).
  window.__played = [];
  HTMLMediaElement.prototype.play = function () {
    window.__played.push(this.src);
    return Promise.resolve();
  };
})();
