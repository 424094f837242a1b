// Keys of the data-entry grid (apps/_keying_app.py, docs/data-entry.md): a clerk never needs
// the mouse.  Cells are ipywidgets Text boxes with the classes "kc" and "kc-<row>-<element>".
//   Tab / Enter            next cell of the row, then the first cell of the next row
//   Shift+Tab / Shift+Enter previous cell
//   Arrow down / up        the same element in the next / previous row
//   Alt+R                  the reason box of this cell's warning (Enter or Esc: back to the cell)
//   Ctrl+S                 save (the box being typed in is sent first)
//   Enter in Period        open the sheet
(function () {
  'use strict';
  var CELL = /(?:^|\s)kc-(\d+)-([A-Z0-9_]+)(?:\s|$)/;
  var REASON = /(?:^|\s)kr-(\d+)-([A-Z0-9_]+)(?:\s|$)/;

  function cells() {
    return Array.prototype.filter.call(document.querySelectorAll('.kc input'), function (input) {
      return input.offsetParent !== null && !input.disabled;
    });
  }
  function place(input, pattern) {
    var box = input.closest('.kc, .keying-reason');
    var found = box ? pattern.exec(box.className) : null;
    return found ? { row: Number(found[1]), code: found[2] } : null;
  }
  function cellAt(row, code) {
    return document.querySelector('.kc-' + row + '-' + code + ' input');
  }
  function go(target) {
    if (target) {
      target.focus();
      target.select();
    }
  }
  function press(selector) {
    var button = document.querySelector(selector);
    if (button && !button.disabled) {
      if (document.activeElement && document.activeElement.blur) {
        document.activeElement.blur();  // its "change" sends the value before the click
      }
      button.click();
    }
  }

  document.addEventListener('keydown', function (event) {
    var input = event.target;
    if ((event.ctrlKey || event.metaKey) && !event.altKey && (event.key === 's' || event.key === 'S')) {
      event.preventDefault();
      press('button.keying-save');
      return;
    }
    if (!(input instanceof HTMLInputElement)) {
      return;
    }
    if (input.closest('.kc')) {
      var list = cells();
      var at = list.indexOf(input);
      var here = place(input, CELL);
      if (event.key === 'Enter') {
        event.preventDefault();
        go(list[at + (event.shiftKey ? -1 : 1)]);
      } else if ((event.key === 'ArrowDown' || event.key === 'ArrowUp') && here) {
        event.preventDefault();
        var step = event.key === 'ArrowDown' ? 1 : -1;
        for (var i = at + step; i >= 0 && i < list.length; i += step) {
          var other = place(list[i], CELL);
          if (other && other.code === here.code) {
            go(list[i]);
            break;
          }
        }
      } else if (event.altKey && (event.key === 'r' || event.key === 'R') && here) {
        var reason = document.querySelector('.kr-' + here.row + '-' + here.code + ' input');
        if (reason) {
          event.preventDefault();
          go(reason);
        }
      }
    } else if (input.closest('.keying-reason')) {
      if (event.key === 'Enter' || event.key === 'Escape') {
        var owner = place(input, REASON);
        if (owner) {
          event.preventDefault();
          input.blur();
          go(cellAt(owner.row, owner.code));
        }
      }
    } else if (input.closest('.keying-period') && event.key === 'Enter') {
      event.preventDefault();
      press('button.keying-open');
    }
  }, true);

  // A cell reached by the keyboard is selected whole: typing replaces it.
  document.addEventListener('focusin', function (event) {
    var target = event.target;
    if (target instanceof HTMLInputElement && target.closest('.kc')) {
      target.select();
    }
  });
})();
