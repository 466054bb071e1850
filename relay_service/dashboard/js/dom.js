/**
 * Building the page without HTML strings: every text from the server goes in through
 * `textContent` or an attribute, so a worker named `<img onerror=…>` shows as text.
 * There is no `innerHTML` anywhere in the dashboard.
 */

const SVG = 'http://www.w3.org/2000/svg';

/**
 * `h('button', {class: 'primary', onclick: fn, dataset: {id}}, 'Start')`.
 * Children are nodes or strings (strings become text nodes); null/false are skipped.
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  return assemble(element, attributes, children);
}

export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  return assemble(element, attributes, children);
}

function assemble(element, attributes, children) {
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Set text only when it changed (keeps selection and avoids layout work). */
export function setText(element, text) {
  const value = text === null || text === undefined ? '' : String(text);
  if (element.textContent !== value) element.textContent = value;
}

export function setAttr(element, name, value) {
  if (value === null || value === undefined || value === false) {
    if (element.hasAttribute(name)) element.removeAttribute(name);
  } else if (element.getAttribute(name) !== String(value)) {
    element.setAttribute(name, String(value));
  }
}
